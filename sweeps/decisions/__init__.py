"""Pure decision rules of a sweep, with no Ray and no I/O: when to stop a trial.

Owns: the schedule-aware stop rule and its settings (the spec embeds them). Tested against
synthetic curves and literal tables; Ray adapters live in `sweeps/execution/schedulers.py`.
May import: `trainers` (the report-point record). Imported by config, execution and benchmarks.
"""
