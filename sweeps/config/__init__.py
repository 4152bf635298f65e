"""What a sweep is: the spec, what is derived from it, and what it resolves to on disk.

Owns: the spec models (`spec`), reading files and overrides (`loading`), every size derived
from a spec (`cadence`), the sweep directory's layout (`layout`), and resolution: model and
data prepared, base reference measured, one `TrialConfig` per point (`resolve`).
May import: `trainers`, `search_spaces`, `sweeps.settings`, `sweeps.decisions`, `sweeps.tracking`
(the store's URI defaults). Never imports Ray.
"""
