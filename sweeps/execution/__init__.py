"""Running sweeps and runs on Ray: the only part of `sweeps/` that imports Ray.

Owns: joining or starting Ray (`cluster`), checks before anything starts (`preflight`), the
Tune function trainable of one trial (`trial`), the Optuna searcher (`search`), the Tune
schedulers and stoppers (`schedulers`), the Tune callback that feeds MLflow and prints
progress (`callback`), `rewarm sweep`/`resume` (`driver`), `rewarm train` (`single_run`),
and a scripted trainable for scheduler tests (`fake_trainable`).
May import: every other part of `sweeps/` except the CLI, `trainers` and `search_spaces`.
"""
