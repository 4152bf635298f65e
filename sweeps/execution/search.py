"""The searcher: Optuna (TPE, or NSGA-II for a Pareto objective) over the knobs, via Ray Tune."""

from __future__ import annotations

from search_spaces.params import Choice, Fixed, LogUniform, Uniform
from sweeps.config.spec import SweepSpec


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


def make_searcher(spec: SweepSpec, params: dict):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.objective.kind == "pareto":
        sampler = optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, spec.budget.max_concurrent * 2))
        return OptunaSearch(space=OptunaSpace(params), metric=["gain", "forgetting"], mode=["max", "min"],
                            sampler=sampler)
    startup = min(10, max(3, spec.budget.num_trials // 3))  # random start, then TPE
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup)
    return OptunaSearch(space=OptunaSpace(params), metric="objective", mode="max", sampler=sampler)
