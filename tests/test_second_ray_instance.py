"""`rewarm sweep` on a machine where another Ray instance already runs (a user's `ray start`;
here the test session's own cluster, `local_ray`, the same kind of instance).

Without --address, Rewarm starts its own private cluster beside it. Ray Train's
placement-group cleaner then has two instances to choose from when it asks the State API
whether a trial's controller is alive; if it cannot tell, the placement groups of trials
that Tune stopped are never freed. Here every trial needs all of the machine's CPUs, so one
leaked placement group would hold the next trial forever: the sweep must go on after its
stopped (diverged) trials. It is also the divergence test of Ray Train trials (the
in-process one is tests/test_sweep_e2e.py): the diverged trial is closed FAILED in MLflow
and never ranked.
"""

import os
import re
import subprocess

import pytest
import yaml

from tests.conftest import assert_divergence_recorded, small_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_sweep_beside_another_ray_instance_frees_stopped_trials(local_ray, toy_world, tmp_path,
                                                                 rewarm_bin, private_ray):
    cpus = os.cpu_count() or 2
    spec = small_spec(
        tmp_path, name="beside",
        search_space={"name": "default", "params": {"max_lr": [3e-3, 60.0], "warmup_frac": 0.0,
                                                      "replay_ratio": 0.05, "schedule": "cosine"}},
        # The seeded sampler proposes 60 first, then 3e-3: a stopped trial, then one that needs every CPU.
        budget={"num_trials": 2, "max_concurrent": 1, "tokens_per_trial": 512 * 24},
        resources={"workers_per_trial": 2, "cpus_per_worker": cpus / 2},  # a trial takes every CPU
        tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "beside"},
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = private_ray.env({k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    try:
        proc = subprocess.run([rewarm_bin, "sweep", str(tmp_path / "s.yaml")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else str(exc.stdout)
        pytest.fail(f"the sweep stalled (a stopped trial's placement group was not freed): {out[-2000:]}")
    finally:
        private_ray.kill()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "multiple active Ray instances" not in out
    # Rewarm's own lines only: no library warning reaches the user's terminal.
    # (Ray and Tune write `<time>\tWARNING <file>:<line> -- ...`, MLflow `... WARNING mlflow...`.)
    assert not [line for line in out.splitlines() if re.search(r"\bWARNING\b", line) or "Failed to fetch" in line], \
        out[-3000:]
    ended = [line for line in out.splitlines() if line.startswith("[rewarm] trial ") and " at " in line]
    statuses = [line.split()[3] for line in ended]
    assert len(statuses) == 2, ended
    assert "diverged" in statuses, "precondition: the seeded sampler proposes the diverging learning rate"
    first_stop = statuses.index("diverged")
    # A trial needing every CPU started, and finished, after a trial was stopped.
    assert "completed" in statuses[first_stop + 1:], statuses

    assert_divergence_recorded(spec, "beside")
