"""How a sweep stops trials on Ray Tune: the scheduler for each `scheduler.kind`, and the
divergence stopper. The decisions themselves are pure (`sweeps/decisions/stop_rule.py`).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search_spaces.knobs import KNOBS, Knob, knob_values
from sweeps.config.layout import STOPPER_STATE_FILE, StateIncompatible
from sweeps.config.resolve import schedule_config
from sweeps.config.spec import SweepSpec
from sweeps.decisions.stop_rule import STOP, Decision, StopRule, StopRuleConfig, TrialSchedule
from trainers.report_point import ReportPoint
from trainers.run_dir import DECISIONS_FILE


def stop_rule_config(spec: SweepSpec) -> StopRuleConfig:
    """The schedule-aware stopper's config: the spec's settings plus the token counts derived from it."""
    c = spec.cadence()
    return StopRuleConfig(**spec.scheduler.settings(), max_tokens=c.max_tokens, recovery_tokens=c.recovery_tokens,
                          min_grace_tokens=c.eval_tokens, objective=spec.objective)


@dataclass(frozen=True)
class TrialScheduleOf:
    """A trial's LR schedule and replay ratio from its Tune config (for the schedule law);
    picklable, as Tune pickles the scheduler with the experiment state."""

    spec: SweepSpec

    def __call__(self, config: dict) -> TrialSchedule | None:
        knobs = knob_values(config)
        if set(knobs) != set(KNOBS):
            return None  # not a trial of this spec's space (nothing to forecast with)
        return TrialSchedule(schedule_config(self.spec, knobs), self.spec.cadence().total_steps,
                             float(knobs[Knob.REPLAY_RATIO]))


def schedule_aware_scheduler(spec: SweepSpec, decisions_root: str | None = None) -> "ScheduleAwareScheduler":
    return ScheduleAwareScheduler(stop_rule_config(spec), decisions_root, schedule_of=TrialScheduleOf(spec))


def make_scheduler(spec: SweepSpec, params: dict, decisions_root: str | None = None) -> TrialScheduler:
    if spec.scheduler.kind == "none":
        return FIFOScheduler()
    if spec.scheduler.kind == "rewarm":
        return schedule_aware_scheduler(spec, decisions_root)
    # time_attr is our own token count: Tune's training_iteration double-counts after a
    # Train retry and restarts at 0 after Tuner.restore (docs/ARCHITECTURE.md).
    max_t = spec.cadence().max_tokens
    return ASHAScheduler(time_attr="tokens", metric="objective", mode="max", max_t=max_t,
                         grace_period=min(spec.asha_grace_tokens(params), max_t),  # grace >= budget: never stop
                         reduction_factor=spec.scheduler.reduction_factor)


class DivergenceStopper(Stopper):
    """Stop a trial at its first report of divergence (a non-finite or runaway loss).

    The training loop already ends a diverged run itself; this is the driver's safety net
    for any trainable that keeps reporting after diverging, and it needs no grace period.
    """

    def __call__(self, trial_id: str, result: dict) -> bool:
        return ReportPoint.from_result(result).diverged

    def stop_all(self) -> bool:
        return False


class ScheduleAwareScheduler(FIFOScheduler):
    """Ray Tune `TrialScheduler` around `StopRule`; every decision goes to the trial's decisions.jsonl.

    Tune does not checkpoint a scheduler's state (a restored Tuner gets the scheduler as it was
    pickled at the start), so the rule's state is written to `<sweep dir>/stopper_state.pkl`
    after every change and read back on first use after `rewarm resume`: rung values, forecast
    fits and each trial's position survive, and reports replayed after a restart are ignored.
    """

    def __init__(self, cfg: StopRuleConfig, decisions_root: str | None = None, schedule_of=None):
        super().__init__()
        self.rule = StopRule(cfg)
        self.decisions_root = decisions_root
        self.schedule_of = schedule_of  # config -> TrialSchedule, for forecaster 'law'
        self.stopped = 0
        self._restored = False

    @property
    def _state_path(self) -> Path | None:
        return Path(self.decisions_root).parent / STOPPER_STATE_FILE if self.decisions_root else None

    def _restore_once(self) -> None:
        if self._restored:
            return
        self._restored = True
        path = self._state_path
        if path is not None and path.exists():
            try:
                with open(path, "rb") as f:
                    self.rule, self.stopped = pickle.load(f)
                # A rule pickled by an older version loads without the attributes this one adds
                # (the schedule law's), and would fail at its first decision: refuse it here.
                missing = sorted(set(vars(StopRule(self.rule.cfg))) - set(vars(self.rule)))
                if missing:
                    raise AttributeError(f"its stopper state lacks {', '.join(missing)}")
            except (ModuleNotFoundError, AttributeError) as exc:
                raise StateIncompatible(f"{path} was written by another version of Rewarm ({exc}); this sweep "
                                        f"cannot be resumed by this one: start a new sweep name") from None

    def _persist(self) -> None:
        path = self._state_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump((self.rule, self.stopped), f)
        os.replace(tmp, path)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # The rule always maximises the sweep objective; accept only that.
        return metric in (None, "objective") and mode in (None, "max")

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._restore_once()
        schedule = self.schedule_of(trial.config) if self.schedule_of is not None else None
        decision = self.rule.observe(trial.trial_id, result, schedule)
        if decision.repeat:
            return TrialScheduler.CONTINUE
        if decision.action == STOP:
            self.stopped += 1
        self._record(decision)
        self._persist()
        return TrialScheduler.STOP if decision.action == STOP else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._restore_once()
        self.rule.complete(trial.trial_id, result or {})
        self._persist()

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass  # its recorded rung values stay: they are real measurements

    def on_trial_error(self, tune_controller, trial) -> None:
        pass

    def debug_string(self) -> str:
        return f"Schedule-aware stopper: {self.stopped} stopped, {self.rule.finished} finished"

    def _record(self, decision: Decision) -> None:
        if not self.decisions_root:
            return
        directory = Path(self.decisions_root) / decision.trial_id
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / DECISIONS_FILE, "a") as f:
            f.write(json.dumps(decision.as_dict()) + "\n")
