"""The words of the system are defined once: knobs, statuses, report-point fields, run files."""

import dataclasses
import math

import pytest

import search_spaces
from search_spaces.knobs import KNOBS, Knob
from sweeps.config.spec import SweepSpec
from sweeps.tracking.statuses import MLFLOW_RUN_STATUS, MLFLOW_SWEEP_STATUS, SweepStatus, TrialStatus, trial_status
from trainers.config import TrialConfig
from trainers.report_point import ReportPoint, RunStatus


@pytest.mark.parametrize("name", sorted(search_spaces.REGISTRY))
def test_every_registered_space_has_exactly_the_knobs(name):
    assert set(search_spaces.get(name).params) == set(KNOBS)


def test_knobs_are_what_a_trial_config_is_built_from():
    fields = set(TrialConfig.model_fields) | {"max_lr", "warmup_frac", "kind"}
    assert {Knob.MAX_LR, Knob.WARMUP_FRAC, Knob.REPLAY_RATIO} <= fields
    assert all(type(k) is str for k in KNOBS)  # plain strings: YAML and JSON keys


def test_a_report_point_survives_the_wire():
    point = ReportPoint(tokens=2048, step=1, status=RunStatus.COMPLETED, loss=3.5, lr=1e-3, L_up=3.0, L_down=4.0,
                        gain=0.1, forgetting=0.05, objective=0.05, tasks={"t": {"accuracy": 0.5, "brier": 0.7}},
                        system={"cpu_utilization_percentage": 40.0}, time_first_step=1.0, time_report=2.0)
    wire = point.to_result()
    assert wire["status"] == "completed" and type(wire["status"]) is str
    assert wire["task/t/accuracy"] == 0.5 and wire["time/report"] == 2.0 and "replay_share" not in wire
    assert wire["system/cpu_utilization_percentage"] == 40.0
    back = ReportPoint.from_result({**wire, "training_iteration": 3, "trial_id": "x"})  # Tune's own keys ignored
    assert back == point


def test_report_fields_are_the_loops_and_the_objectives():
    from trainers.objective import BaseReference, ObjectiveConfig, score

    names = {f.name for f in dataclasses.fields(ReportPoint)}
    scores = score(3.0, 4.0, BaseReference(L_up=3.0, L_down=4.1), ObjectiveConfig())
    assert set(scores) <= names and set(ReportPoint.EVAL_FIELDS) <= names


def test_a_status_from_elsewhere_is_kept_as_it_came():
    assert ReportPoint.from_result({"tokens": 1, "status": "paused-by-someone"}).status == "paused-by-someone"


def test_divergence_is_one_rule():
    assert ReportPoint(tokens=1, status=RunStatus.DIVERGED).diverged
    assert ReportPoint(tokens=1, loss=math.nan).diverged
    assert not ReportPoint(tokens=1, loss=2.0).diverged


@pytest.mark.parametrize("last, errored, expected", [
    ({"tokens": 1, "status": "completed"}, False, TrialStatus.COMPLETED),
    ({"tokens": 1, "status": "diverged"}, False, TrialStatus.DIVERGED),
    ({"tokens": 1, "status": "running"}, False, TrialStatus.EARLY_STOPPED),  # ended by the scheduler
    (None, False, TrialStatus.EARLY_STOPPED),
    ({"tokens": 1, "status": "completed"}, True, TrialStatus.FAILED),
])
def test_trial_status_table(last, errored, expected):
    assert trial_status(last, errored) == expected


def test_every_status_has_an_mlflow_run_status():
    assert set(MLFLOW_RUN_STATUS) == set(TrialStatus) and set(MLFLOW_SWEEP_STATUS) == set(SweepStatus)


def test_spec_sections_embed_component_configs_instead_of_copying_them():
    from sweeps.decisions.stop_rule import StopRuleSettings
    from trainers.schedules import ScheduleShape

    spec = SweepSpec(name="x")
    assert isinstance(spec.training, ScheduleShape) and isinstance(spec.scheduler, StopRuleSettings)
