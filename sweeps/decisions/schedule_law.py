"""Forecast a trial's final losses from its curve *and its LR schedule* (a schedule law).

The law (Tissue et al. 2024, arXiv 2408.11029, "scaling law with LR annealing"), per eval
curve (L_up or L_down of one trial) after s optimizer steps:

    L(s) = L0 + A * (S1(s) + s0) ** -alpha - C * S2(s)

    S1(s) = sum_{i<s} eta_i / eta_ref                 forward area: how far the LR has carried it
    S2(s) = sum_{i<s} m_i,  m_i = lam * m_{i-1} + (eta_{i-1} - eta_i) / eta_ref
                                                       annealing area: LR *decreases* lower the loss

with eta_{-1} = the base model's final LR (`base_final_lr`). Re-warming raises the LR, so m
goes negative, S2 falls and the loss *rises*: the law explains the re-warming bump
(Gupta et al. 2023) instead of reading it as a bad trial. The cosine decay then drives S2 up
and the loss down. For CPT (Wang et al. 2025, arXiv 2505.07796) the data terms depend on the
mixture, so here:

- shared by every trial of a sweep (one fit per metric): alpha, s0 and lam (grid search);
- per trial: L0, A and C (linear, in closed form for each grid point). A's sign is free: A > 0
  is a loss falling as the new domain is learned (L_down), A < 0 a loss rising to a plateau as
  the old one is forgotten (L_up).
- for a running trial, (L0, A, C) get a Gaussian prior from the ended trials: a ridge
  regression of their fitted terms on the trial's replay ratio and log peak LR (and its
  square), with the residual covariance. With only a few points the prior dominates; as the
  trial's own points come in, they do. A config never run is forecast from the prior and the
  base point alone (`LawForecaster.forecast_untried`).

Every curve includes the base model's point at step 0 (S1 = S2 = 0, L = the base's loss,
known exactly for every trial), which ties L0 + A * s0**-alpha to the base.

Intervals: the Bayesian predictive sd (noise plus the trial's parameter uncertainty) is scaled
by a split-conformal factor: each finished trial's final value is forecast from each prefix of
its own curve, and the factor makes `coverage` of those standardized errors fall inside the
interval (with the finite-sample rank ceil((n+1) q)). Without enough finished trials the
factor is not estimated and no interval is given (the stopper then does not stop on it).

Everything here is pure numpy (unit-tested on curves drawn from the law with known
parameters, tests/test_schedule_law.py; coverage on held-out ground-truth trials,
`benchmarks/forecast_coverage.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

ALPHAS = tuple(float(a) for a in np.geomspace(0.05, 3.0, 24))
OFFSETS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # s0, in steps at eta_ref
DECAYS = (0.0, 0.9, 0.99, 0.999)  # lam
CALIBRATION_TRIALS = 100  # finished trials the intervals are calibrated on (the newest)
ROBUST_K = 3.0  # residuals beyond 3 noise sd are down-weighted (a spike of one eval is noise)
ROBUST_ITERATIONS = 8
Z90 = 1.6448536269514722  # the standard normal's 95th percentile: a central 90% interval


@dataclass(frozen=True)
class ScheduleAreas:
    """S1 and S2 after each number of steps 0..total (index s = steps done)."""

    S1: np.ndarray
    S2: np.ndarray


def schedule_areas(lrs: Sequence[float], eta_ref: float, lam: float, base_final_lr: float = 0.0) -> ScheduleAreas:
    """The law's two areas after s = 0..len(lrs) steps of the schedule `lrs` (LR of each step)."""
    eta = np.asarray(lrs, dtype=float) / eta_ref
    S1 = np.concatenate([[0.0], np.cumsum(eta)])
    prev = np.concatenate([[base_final_lr / eta_ref], eta[:-1]])
    drops = prev - eta
    # m_i = lam * m_{i-1} + d_i: a first-order IIR filter (C speed for 10^5-step schedules).
    # scipy is imported here, not with the module: every sweep driver imports this module
    # (through the spec) and scipy.signal costs it ~0.7 s before its first trial.
    from scipy.signal import lfilter

    m = lfilter([1.0], [1.0, -lam], drops) if lam else drops
    S2 = np.concatenate([[0.0], np.cumsum(m)])
    return ScheduleAreas(S1, S2)


@dataclass(frozen=True)
class Curve:
    """One metric of one trial: values after the given step counts (step 0 = the base model)."""

    steps: tuple[int, ...]
    values: tuple[float, ...]
    lrs: Sequence[float]  # the trial's whole schedule: LR of each of its steps (tuple or read-only array)
    replay: float = 0.0

    def prefix(self, n: int) -> "Curve":
        """The curve as it was after its first n points."""
        return Curve(self.steps[:n], self.values[:n], self.lrs, self.replay)


@dataclass(frozen=True)
class LawParams:
    """The parameters every trial of a sweep shares (for one metric)."""

    alpha: float
    s0: float
    lam: float
    sigma: float  # residual sd of one eval point


TERMS = ("L0", "A", "C")  # per-trial terms, in the order of the law's columns


def _columns(curve: Curve, areas: ScheduleAreas, alpha: float, s0: float, steps=None) -> np.ndarray:
    """The law's regressors [1, (S1 + s0)^-alpha, -S2] at the curve's steps (or `steps`)."""
    s = np.asarray(curve.steps if steps is None else steps)
    return np.stack([np.ones(len(s)), (areas.S1[s] + s0) ** -alpha, -areas.S2[s]], 1)


def fit_law(curves: Sequence[Curve], eta_ref: float, base_final_lr: float = 0.0,
            alphas=ALPHAS, offsets=OFFSETS, decays=DECAYS) -> tuple[LawParams, np.ndarray]:
    """The shared parameters (grid over alpha, s0, lam) and each curve's (L0, A, C) by least
    squares over every point of every curve (each curve's terms in closed form per grid point).
    Curves need >= 4 points (3 terms + 1)."""
    curves = [c for c in curves if len(c.steps) >= len(TERMS) + 1]
    if len(curves) < 2:
        raise ValueError(f"the law needs at least 2 curves of >= {len(TERMS) + 1} points each")
    n, p, k = len(curves), max(len(c.steps) for c in curves), len(TERMS)
    y, w = np.zeros((n, p)), np.zeros((n, p))
    steps = np.zeros((n, p), dtype=int)
    for j, c in enumerate(curves):
        y[j, :len(c.steps)], w[j, :len(c.steps)], steps[j, :len(c.steps)] = c.values, 1.0, c.steps
    best = None
    for lam in decays:
        # The areas at each curve's steps, as (curves, points) arrays (padding: weight 0), so the
        # grid below is array arithmetic over every curve at once.
        S1, S2 = np.zeros((n, p)), np.zeros((n, p))
        for j, c in enumerate(curves):
            a = schedule_areas(c.lrs, eta_ref, lam, base_final_lr)
            S1[j], S2[j] = a.S1[steps[j]], a.S2[steps[j]]
        for s0 in offsets:
            for alpha in alphas:
                X = np.stack([w, (S1 + s0) ** -alpha * w, -S2 * w], axis=2)
                gram = np.einsum("npi,npj->nij", X, X) + 1e-12 * np.eye(k)
                theta = np.linalg.solve(gram, np.einsum("npi,np->ni", X, y)[..., None])[..., 0]
                sse = float((w * (y - np.einsum("npi,ni->np", X, theta)) ** 2).sum())
                if np.isfinite(sse) and (best is None or sse < best[0]):
                    best = (sse, alpha, s0, lam, theta)
    if best is None:
        raise ValueError("the law could not be fitted (degenerate curves)")
    sse, alpha, s0, lam, theta = best
    dof = max(int(w.sum()) - k * n, 1)
    return LawParams(alpha, s0, lam, math.sqrt(sse / dof)), theta


def _features(curve: Curve) -> np.ndarray:
    """What a trial's terms are regressed on before its own points say more: its replay ratio
    and its peak LR (log, relative to the sweep's first point of the schedule)."""
    g = _log_peak_lr(curve.lrs)
    return np.array([1.0, curve.replay, g, g * g])


def _log_peak_lr(lrs: Sequence[float]) -> float:
    return math.log(float(np.max(lrs)))


@dataclass
class TrialPrior:
    """Gaussian prior of a trial's (L0, A, C) given its features: ridge regression of the ended
    trials' fitted terms on [1, replay, log peak LR], with their residual covariance."""

    coef: np.ndarray  # (features, terms)
    cov: np.ndarray  # (terms, terms)

    @classmethod
    def from_fits(cls, terms: np.ndarray, curves: Sequence[Curve], ridge: float = 1e-2) -> "TrialPrior":
        X = np.stack([_features(c) for c in curves])
        penalty = ridge * np.diag([0.0] + [1.0] * (X.shape[1] - 1)) * len(curves)
        centred = X - np.r_[0.0, X[:, 1:].mean(0)]  # penalise slopes, not the level
        coef_c = np.linalg.solve(centred.T @ centred + penalty + 1e-12 * np.eye(X.shape[1]), centred.T @ terms)
        coef = coef_c.copy()
        coef[0] -= X[:, 1:].mean(0) @ coef_c[1:]
        resid = terms - X @ coef
        dof = len(curves) - X.shape[1]
        cov = resid.T @ resid / dof if dof >= 2 else np.cov(terms.T) + 1e-6 * np.eye(terms.shape[1])
        # A floor, so a sweep of near-identical trials cannot make the prior a certainty.
        cov = cov + np.diag((0.05 * np.abs(terms).mean(0)) ** 2 + 1e-8)
        return cls(coef, cov)

    def mean(self, curve: Curve) -> np.ndarray:
        return _features(curve) @ self.coef


@dataclass
class MetricModel:
    """The fitted law of one metric (L_up or L_down) and the prior of the per-trial terms."""

    params: LawParams
    prior: TrialPrior
    eta_ref: float
    base_final_lr: float
    _areas: dict = field(default_factory=dict, repr=False)  # a cache: never pickled

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_areas": {}}

    def areas(self, lrs: Sequence[float]) -> ScheduleAreas:
        # Keyed by the table's bytes (a trial's schedule is an array of up to 10^5 steps; hashing
        # its bytes is microseconds, the areas a pass over it).
        key = hash(np.asarray(lrs, dtype=float).tobytes())
        if key not in self._areas:
            if len(self._areas) > 4096:
                self._areas.clear()
            self._areas[key] = schedule_areas(lrs, self.eta_ref, self.params.lam, self.base_final_lr)
        return self._areas[key]

    def forecast(self, curve: Curve, at_step: int | None = None) -> tuple[float, float]:
        """(mean, predictive sd) of the metric after `at_step` steps (default: the schedule's
        end), given the curve's points so far (the posterior of its terms under the prior)."""
        p = self.params
        a = self.areas(curve.lrs)
        X = _columns(curve, a, p.alpha, p.s0)
        y = np.asarray(curve.values, dtype=float)
        prior_prec, prior_mean = np.linalg.inv(self.prior.cov), self.prior.mean(curve)
        # Robust weights, by iterative reweighting: a point the trial's own law cannot explain (a
        # loss spike of one eval, far outside the noise) counts as noise, not as evidence that
        # the trial is bad. Weight (k / r)^2 beyond k sd, so a point's pull k^2 / r falls as it
        # lies further out (redescending; Huber's k / r would still pull by k sd). The base
        # point (step 0) is exact and keeps its weight.
        w = np.ones(len(y))
        for _ in range(ROBUST_ITERATIONS):
            Xw = X.T * w
            cov = np.linalg.inv(prior_prec + Xw @ X / p.sigma ** 2)
            theta = cov @ (prior_prec @ prior_mean + Xw @ y / p.sigma ** 2)
            r = np.abs(y - X @ theta) / p.sigma
            w_next = np.minimum(1.0, (ROBUST_K / np.maximum(r, 1e-12)) ** 2)
            w_next[np.asarray(curve.steps) == 0] = 1.0
            if np.allclose(w_next, w, atol=1e-3):
                break
            w = w_next
        T = len(curve.lrs) if at_step is None else at_step
        x = _columns(curve, a, p.alpha, p.s0, steps=[T])[0]
        return float(x @ theta), float(math.sqrt(x @ cov @ x + p.sigma ** 2))


def fit_metric(curves: Sequence[Curve], eta_ref: float, base_final_lr: float = 0.0, **grid) -> MetricModel:
    """The law and the per-trial prior of one metric, from the ended trials' curves."""
    usable = [c for c in curves if len(c.steps) >= len(TERMS) + 1]
    params, terms = fit_law(usable, eta_ref, base_final_lr, **grid)
    return MetricModel(params, TrialPrior.from_fits(terms, usable), eta_ref, base_final_lr)


def conformal_scale(z_scores: Sequence[float], coverage: float) -> float | None:
    """The factor k such that mean +- k * Z * sd covers `coverage` of the calibration errors
    (split conformal: the ceil((n+1) q)-th smallest |z| / Z). None if too few scores."""
    z = np.sort(np.abs(np.asarray(z_scores, float)))
    n = len(z)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        return None
    return float(z[rank - 1] / _z_of(coverage))


def _z_of(coverage: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + coverage / 2)


# ---------------------------------------------------------------------- a trial's forecast

METRICS = ("L_up", "L_down")
# Calibration by how much of its budget a trial has run; the first bucket is "nothing yet"
# (the base point only: a config not tried), the prior's own error.
_BUCKETS = (0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class TrialCurves:
    """What the forecaster knows of one trial: its schedule, replay ratio and both eval curves
    (step 0 = the base model's losses)."""

    lrs: Sequence[float]  # a tuple, or a read-only array for long schedules
    replay: float
    steps: tuple[int, ...]
    L_up: tuple[float, ...]
    L_down: tuple[float, ...]

    def curve(self, metric: str) -> Curve:
        return Curve(self.steps, getattr(self, metric), self.lrs, self.replay)

    def prefix(self, n: int) -> "TrialCurves":
        return TrialCurves(self.lrs, self.replay, self.steps[:n], self.L_up[:n], self.L_down[:n])

    @property
    def finished(self) -> bool:
        return bool(self.steps) and self.steps[-1] >= len(self.lrs)


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float | None  # None: too few finished trials to calibrate an interval
    hi: float | None


@dataclass(frozen=True)
class Forecast:
    """A trial's predicted final L_up, L_down and objective, with `coverage` intervals."""

    L_up: Interval
    L_down: Interval
    objective: Interval
    coverage: float
    # The trial's peak LR or replay ratio lies outside those of the finished trials: the law
    # extrapolates (the prior's regression beyond its data, the annealing term beyond any
    # finished schedule) and the intervals, calibrated on finished trials, do not cover that.
    extrapolated: bool = False


class LawForecaster:
    """Fits the law on the ended trials and forecasts any trial's end (see the module docstring).

    `objective(L_up, L_down)` is the sweep's objective of final losses (trainers/objective.py's
    `score`, with the base reference bound). Intervals are calibrated on finished trials only
    (their true finals are known), by leave-one-out: each is forecast from each prefix of its
    curve under a prior fitted without it.
    """

    def __init__(self, objective, coverage: float = 0.9, eta_ref: float | None = None):
        self.objective = objective
        self.coverage = coverage
        self.eta_ref = eta_ref
        self.models: dict[str, MetricModel] = {}
        self.scales: dict[str, dict[int, float]] = {}
        self.covered: tuple | None = None  # (log peak LR, replay) ranges of the finished trials
        self.fitted_on = 0

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def fit(self, ended: Sequence[TrialCurves]) -> None:
        """(Re)fit on every ended trial (finished or stopped: each curve carries information on
        the shared law; a survivors-only fit would learn only from the best schedules)."""
        usable = [t for t in ended if len(t.steps) >= len(TERMS) + 1]
        if len(usable) < 3 or sum(t.finished for t in usable) < 2:
            return
        eta_ref = self.eta_ref or float(np.median([np.max(t.lrs) for t in usable]))
        self.eta_ref = eta_ref
        self.models = {m: fit_metric([t.curve(m) for t in usable], eta_ref) for m in METRICS}
        # Calibration forecasts every prefix of each finished trial under a leave-one-out prior:
        # the newest CALIBRATION_TRIALS are plenty for a conformal quantile, and keep a refit
        # over 1,000 trials in the driver's event loop to seconds.
        finished = [t for t in usable if t.finished]
        self.scales = self._calibrate(finished[-CALIBRATION_TRIALS:])
        g = [_log_peak_lr(t.lrs) for t in finished]
        r = [float(t.replay) for t in finished]
        self.covered = ((min(g), max(g)), (min(r), max(r)))
        self.fitted_on = len(usable)

    def forecast(self, trial: TrialCurves) -> Forecast | None:
        """The trial's forecast final values (None before the first fit)."""
        if not self.ready:
            return None
        bucket = _bucket(trial)
        out = {}
        for m in METRICS:
            mean, sd = self.models[m].forecast(trial.curve(m))
            out[m] = (mean, sd)
        (mu_up, sd_up), (mu_down, sd_down) = out["L_up"], out["L_down"]
        J, sd_J = _objective_moments(self.objective, out)
        z = _z_of(self.coverage)

        def interval(name, mean, sd):
            k = self.scales.get(name, {}).get(bucket)
            return Interval(mean, None, None) if k is None else Interval(mean, mean - k * z * sd, mean + k * z * sd)

        return Forecast(interval("L_up", mu_up, sd_up), interval("L_down", mu_down, sd_down),
                        interval("objective", J, sd_J), self.coverage, self.extrapolates(trial))

    def extrapolates(self, trial: TrialCurves) -> bool:
        """Whether the trial's peak LR or replay ratio lies outside the finished trials' (with a
        margin of 5% of each range, or of the value where the range is one point)."""
        if self.covered is None:
            return True
        x = (_log_peak_lr(trial.lrs), float(trial.replay))
        for v, (lo, hi) in zip(x, self.covered):
            margin = 0.05 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-12
            if not lo - margin <= v <= hi + margin:
                return True
        return False

    def surprise(self, trial: TrialCurves) -> float:
        """How far the trial's newest point lies from what the law expected of it from the points
        before (in predictive sd, the larger over L_up and L_down): a spike of one eval shows as
        a large surprise, a trial that is simply bad as foreseen does not."""
        if not self.ready or len(trial.steps) < 2:
            return 0.0
        before, step = trial.prefix(len(trial.steps) - 1), trial.steps[-1]
        worst = 0.0
        for m in METRICS:
            mean, sd = self.models[m].forecast(before.curve(m), at_step=step)
            worst = max(worst, abs(getattr(trial, m)[-1] - mean) / sd)
        return worst

    def forecast_untried(self, lrs: Sequence[float], replay: float, base_L_up: float,
                         base_L_down: float) -> Forecast | None:
        """The forecast of a config never run: its schedule and replay ratio through the prior,
        tied to the base model's losses at step 0 (calibrated on the "nothing yet" bucket)."""
        return self.forecast(TrialCurves(lrs, float(replay), (0,), (base_L_up,), (base_L_down,)))

    def _calibrate(self, finished: Sequence[TrialCurves]) -> dict[str, dict[int, float]]:
        scores: dict[str, dict[int, list[float]]] = {n: {b: [] for b in range(len(_BUCKETS))}
                                                     for n in (*METRICS, "objective")}
        if len(finished) < 3:
            return {}
        curves = {m: [t.curve(m) for t in finished] for m in METRICS}
        terms = {m: np.stack([_fit_terms(self.models[m], c) for c in curves[m]]) for m in METRICS}
        keep = np.ones(len(finished), bool)
        for j, trial in enumerate(finished):
            # Leave-one-out: this trial's own terms must not be in the prior that forecasts it.
            keep[j] = False
            loo = {m: dataclasses.replace(self.models[m], prior=TrialPrior.from_fits(
                terms[m][keep], [c for c, k in zip(curves[m], keep) if k])) for m in METRICS}
            keep[j] = True
            truth = {"L_up": trial.L_up[-1], "L_down": trial.L_down[-1]}
            truth["objective"] = self.objective(truth["L_up"], truth["L_down"])
            for n in range(1, len(trial.steps)):  # every prefix short of the end, from the base point alone
                prefix = trial.prefix(n)
                b = _bucket(prefix)
                mu = {m: loo[m].forecast(prefix.curve(m)) for m in METRICS}
                for m in METRICS:
                    scores[m][b].append((truth[m] - mu[m][0]) / mu[m][1])
                J, sd_J = _objective_moments(self.objective, mu)
                scores["objective"][b].append((truth["objective"] - J) / max(sd_J, 1e-12))
        out: dict[str, dict[int, float]] = {}
        for name, by_bucket in scores.items():
            pooled = [z for zs in by_bucket.values() for z in zs]
            out[name] = {}
            for b, zs in by_bucket.items():
                k = conformal_scale(zs, self.coverage)
                out[name][b] = k if k is not None else conformal_scale(pooled, self.coverage)
            out[name] = {b: k for b, k in out[name].items() if k is not None}
        return out


def _objective_moments(objective, moments: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The objective at the metrics' means, and its sd by the delta method (numeric slopes)."""
    (mu_up, sd_up), (mu_down, sd_down) = moments["L_up"], moments["L_down"]
    J, h = objective(mu_up, mu_down), 1e-4
    slope_up = (objective(mu_up + h, mu_down) - J) / h
    slope_down = (objective(mu_up, mu_down + h) - J) / h
    return J, math.sqrt((slope_up * sd_up) ** 2 + (slope_down * sd_down) ** 2)


def _fit_terms(model: MetricModel, curve: Curve) -> np.ndarray:
    """A curve's own (L0, A, C) under the shared law (least squares; used to refit priors)."""
    p = model.params
    X = _columns(curve, model.areas(curve.lrs), p.alpha, p.s0)
    return np.linalg.lstsq(X, np.asarray(curve.values), rcond=None)[0]


def _bucket(trial: TrialCurves) -> int:
    seen = trial.steps[-1] / len(trial.lrs) if trial.steps else 0.0
    return next(i for i, edge in enumerate(_BUCKETS) if seen <= edge or edge == _BUCKETS[-1])
