"""Answers about a finished (or running) sweep, from MLflow alone: no Ray, no sweep dir.

Owns: ranking configs and exporting the best (`best`), task performance vs pre-training loss
(`loss_perspective`: pure fits; `analyze`: over a sweep), and the HTML report (`report`).
May import: `trainers` (vocabulary), `search_spaces`, `sweeps.tracking`. Never imports Ray.
"""
