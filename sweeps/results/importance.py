"""`rewarm importance`: which knob matters, for gain, forgetting and the objective.

Read from the sweep's Optuna study (sweeps/tracking/study.py) with Optuna's fANOVA evaluator
(a random forest over the searched knobs; seeded, so a rerun gives the same numbers; it
ignores the direction of the target, which suits gain and forgetting alike).

Only completed trials count: a trial stopped early holds a value at fewer tokens, which
would read as "this knob hurts" when it only means "this trial was cut short". Knobs that
were fixed have no importance (they did not vary); they are listed as fixed. Below
`min_trials` completed trials (two per searched knob, at least MIN_TRIALS_FLOOR) fANOVA's
forest fits noise, so the answer is a one-line error saying how many are needed.
"""

from __future__ import annotations

import json
import time

import yaml

from search_spaces.knobs import KNOBS
from sweeps.tracking.records import load_sweep
from sweeps.tracking.statuses import TrialStatus
from sweeps.tracking.study import STATUS_ATTR, load_sweep_study, study_storage_url
from sweeps.tracking.tracker import SPEC_ARTIFACT, STUDY_STORAGE_TAG, STUDY_TAG
from trainers.errors import UserError
from trainers.report_point import is_finite

TARGETS = ("objective", "gain", "forgetting")
MIN_TRIALS_FLOOR = 4
IMPORTANCE_PREFIX = "importance/"  # parent-run metrics importance/<target>/<knob>
IMPORTANCE_ARTIFACT = "importance.json"


class NotEnoughTrials(UserError):
    """Too few completed trials for a meaningful importance estimate."""


def min_trials(searched: int) -> int:
    return max(MIN_TRIALS_FLOOR, 2 * searched)


def knob_importance(trials: list, searched: list[str], seed: int = 0) -> dict[str, dict[str, float]]:
    """target -> knob -> importance (each target's importances sum to 1) over `trials`
    (Optuna FrozenTrials, completed, with the targets as user attributes); None for a target
    that is the same for every trial."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from sweeps.settings import set_optuna_verbosity

    # A scratch copy the user never sees: Optuna would announce it on stderr ("A new study
    # created in memory") in the middle of `rewarm report`'s output (`rewarm -v` shows it).
    set_optuna_verbosity()
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for t in trials:  # a single-objective copy: fANOVA reads params and one target per call
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=0.0,
                                                  user_attrs=t.user_attrs))
    out = {}
    for target in TARGETS:
        if len({round(t.user_attrs[target], 12) for t in trials}) < 2:
            out[target] = {k: None for k in searched}  # the same for every trial: nothing to attribute
            continue
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), params=searched,
                                       target=lambda t, target=target: t.user_attrs[target], normalize=True)
        out[target] = {k: float(values.get(k, 0.0)) for k in searched}
    return out


def sweep_importance(client, sweep: str, tracking_uri: str, experiment: str | None = None, parent=None) -> dict:
    """The sweep's knob importance: {"sweep", "parent_run_id", "trials": n completed, "searched": [knobs],
    "fixed": {knob: value}, "importance": {target: {knob: share}}}."""
    import mlflow.artifacts

    parent = parent or load_sweep(client, sweep, experiment, with_trials=False)[0]
    spec = yaml.safe_load(mlflow.artifacts.load_text(f"{parent.info.artifact_uri.rstrip('/')}/{SPEC_ARTIFACT}"))
    url = study_storage_url(tracking_uri, (spec.get("tracking") or {}).get("study_storage"), spec["storage_path"])
    tagged = parent.data.tags.get(STUDY_STORAGE_TAG, "")
    if tagged and "***" not in tagged:  # where the driver put it (read through a server, the rule cannot see it)
        url = tagged
    study = load_sweep_study(url, parent.data.tags.get(STUDY_TAG, sweep))
    completed = [t for t in study.trials if t.user_attrs.get(STATUS_ATTR) == TrialStatus.COMPLETED
                 and all(is_finite(t.user_attrs.get(k)) for k in TARGETS)]
    searched = [k for k in KNOBS if any(k in t.distributions for t in study.trials)]
    fixed = {k: v for k, v in json.loads(parent.data.tags.get("rewarm.search_space", "{}")).items() if k not in searched}
    need = min_trials(len(searched))
    if not searched:
        raise NotEnoughTrials(f"sweep {sweep!r} searched no knob (all fixed): nothing to rank")
    if len(completed) < need:
        raise NotEnoughTrials(f"sweep {sweep!r} has {len(completed)} completed trials; knob importance needs at least "
                              f"{need} (two per searched knob) - run more trials (`rewarm resume` cannot add them; "
                              f"start a sweep with a larger budget.num_trials)")
    return {"sweep": sweep, "parent_run_id": parent.info.run_id, "trials": len(completed), "searched": searched,
            "fixed": fixed,
            "importance": knob_importance(completed, searched, seed=int(spec.get("seed", 0)))}


def log_importance(client, result: dict) -> None:
    """The importances as parent-run metrics (importance/<target>/<knob>) and a JSON artifact."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(f"{IMPORTANCE_PREFIX}{target}/{knob}", value, now, result["trials"])
               for target, values in result["importance"].items() for knob, value in values.items()
               if value is not None]
    client.log_batch(result["parent_run_id"], metrics=metrics)
    client.log_dict(result["parent_run_id"], result, IMPORTANCE_ARTIFACT)


def render_importance(result: dict) -> str:
    knobs = result["searched"]
    width = max(len(k) for k in knobs)
    lines = [f"knob importance over {result['trials']} completed trials (Optuna fANOVA; each column sums to 1)",
             "  ".join(["knob".ljust(width), *(t.rjust(10) for t in TARGETS)])]
    for k in sorted(knobs, key=lambda k: -(result["importance"]["objective"][k] or 0.0)):
        lines.append("  ".join([k.ljust(width), *(f"{result['importance'][t][k]:10.3f}"
                                                  if result["importance"][t][k] is not None else f"{'(constant)':>10s}"
                                                  for t in TARGETS)]))
    lines += [f"{k.ljust(width)}  fixed at {v}" for k, v in result["fixed"].items()]
    return "\n".join(lines)
