"""The searcher: Optuna (TPE, random, a grid, or NSGA-II for a Pareto objective) over the knobs,
via Ray Tune, its study kept in the sweep's store (sweeps/tracking/study.py)."""

from __future__ import annotations

import threading

import optuna
from optuna.samplers import GridSampler
from ray.tune.search.optuna import OptunaSearch

from search_spaces.params import Choice, Fixed, LogUniform, Uniform
from sweeps.config.spec import SweepSpec
from sweeps.settings import set_optuna_verbosity
from sweeps.tracking.statuses import TrialStatus, trial_status
from sweeps.tracking.study import LOST_TRIALS_ATTR, STATUS_ATTR, TUNE_TRIAL_ATTR
from sweeps.tracking.tracker import FINAL_METRICS
from trainers import ray_compat
from trainers.report_point import is_finite


class OptunaSpace:
    """Define-by-run Optuna space from typed params; fixed knobs are returned as constants.

    A class, not a closure: Tune pickles the searcher (with its space) into the sweep's
    experiment state, which is what lets `rewarm resume` keep the searcher's history.
    """

    def __init__(self, params: dict):
        unknown = {name: type(p).__name__ for name, p in params.items()
                   if not isinstance(p, (Fixed, LogUniform, Uniform, Choice))}
        if unknown:  # a new Param type must be taught to Optuna here, not dropped
            raise TypeError(f"OptunaSpace cannot search parameters of type {unknown}")
        self.params = params

    def __call__(self, trial):
        constants = {}
        for name, p in self.params.items():
            if isinstance(p, Fixed):
                constants[name] = p.value
            elif isinstance(p, LogUniform):
                trial.suggest_float(name, p.low, p.high, log=True)
            elif isinstance(p, Uniform):
                trial.suggest_float(name, p.low, p.high)
            elif isinstance(p, Choice):
                trial.suggest_categorical(name, list(p.values))
        return constants


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch, writing the sweep's study the way an Optuna user reads one.

    - Intermediate values are the trial's objective against tokens trained (Ray's own would
      be against report count, which means nothing across cadences).
    - When Tune ends a trial, its Tune id, Rewarm status and final metrics become user
      attributes first. A trial the scheduler stopped early reaches Optuna as PRUNED
      (`stopped_trials: pruned`) or as COMPLETE with its truncated value (`truncated`, Ray's
      rule); its `rewarm_status` says early_stopped either way.
    - On `rewarm resume`, trials the study holds as RUNNING that Tune's restored state does not
      know (suggested after Tune's last state save, before the driver stopped) are marked FAIL
      and listed in the study's `rewarm_lost_trials` attribute: they will never report, and a
      study that keeps them RUNNING lies.
    """

    def __init__(self, *args, stopped_trials: str = "truncated", **kwargs):
        super().__init__(*args, **kwargs)
        self.stopped_trials = stopped_trials

    def on_trial_result(self, trial_id: str, result: dict):
        trials, completed, _ = ray_compat.optuna_search_state(self)
        if isinstance(self.metric, list) or trial_id in completed or trial_id not in trials:
            return  # Optuna takes no intermediate values for several objectives
        value, tokens = result.get(self.metric), result.get("tokens")  # ReportPoint's time axis
        if tokens is not None and is_finite(value):  # a step reported twice is ignored (Optuna warns)
            try:
                trials[trial_id].report(float(value), int(tokens))
            except RuntimeError:  # finished in the study already: told before a driver stopped,
                completed.add(trial_id)  # unknown to Tune's restored state; the study keeps its end

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trials, completed, study = ray_compat.optuna_search_state(self)
        if trial_id in trials and trial_id not in completed:
            if result:  # Tune does not pass the result that made the scheduler stop a trial on
                self.on_trial_result(trial_id, result)
            status = trial_status(result, errored=error)
            attrs = {TUNE_TRIAL_ATTR: trial_id, STATUS_ATTR: str(status)}
            attrs |= {k: float(result[k]) for k in FINAL_METRICS if result and is_finite(result.get(k))}
            try:
                for key, value in attrs.items():
                    trials[trial_id].set_user_attr(key, value)
            except (RuntimeError, ValueError):  # already finished in the store: told before the driver
                pass                            # stopped, Tune's restored state did not know
            if status == TrialStatus.EARLY_STOPPED and self.stopped_trials == "pruned":
                try:
                    study.tell(trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                except (RuntimeError, ValueError):
                    pass
                completed.add(trial_id)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        from optuna.trial import TrialState

        trials, _, study = ray_compat.optuna_search_state(self)
        known = {t.number for t in trials.values()}
        lost = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known]
        for number in lost:
            study.tell(number, state=TrialState.FAIL)
            if isinstance(study.sampler, GridSampler):  # its grid point would never run: queue it again
                study.enqueue_trial(study.trials[number].params)
        if lost:  # why they failed, where optuna-dashboard shows it (a finished trial takes no attributes)
            previous = study.user_attrs.get(LOST_TRIALS_ATTR, [])
            study.set_user_attr(LOST_TRIALS_ATTR, sorted(set(previous) | set(lost)))


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that survives pickling: Tune pickles the searcher into `tuner.pkl` (and for
    `rewarm resume`), and Optuna 5.1's genetic-algorithm base holds a `threading.Lock`, which
    does not pickle. The lock only guards in-process sampling, so a fresh one is right."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not hasattr(self, "_thread_lock"):
            self._thread_lock = threading.Lock()


def make_searcher(spec: SweepSpec, params: dict, storage=None):
    """The sweep's searcher; `storage` (an Optuna RDBStorage: tracking/study.py) keeps its study
    in the sweep's store under the sweep's name, None keeps it in memory only."""
    set_optuna_verbosity()
    where = dict(storage=storage, study_name=spec.name)
    algorithm = spec.search_algorithm()
    if algorithm == "grid":
        # Optuna's GridSampler gives trial number k grid point k: every point once, whatever the
        # concurrency; SweepSearch.restore re-queues a point whose trial was lost.
        sampler = optuna.samplers.GridSampler({k: list(p.values) for k, p in params.items() if isinstance(p, Choice)},
                                              seed=spec.seed)
    elif algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    elif algorithm == "nsga2":
        sampler = PicklableNSGAIISampler(seed=spec.seed, population_size=max(4, spec.budget.max_concurrent * 2))
    else:
        startup = min(10, max(3, spec.budget.num_trials // 3))  # random start, then TPE
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup)
    where |= dict(sampler=sampler, stopped_trials=spec.search_space.stopped_trials)
    if spec.objective.kind == "pareto":
        return SweepSearch(space=OptunaSpace(params), metric=["gain", "forgetting"], mode=["max", "min"], **where)
    return SweepSearch(space=OptunaSpace(params), metric="objective", mode="max", **where)
