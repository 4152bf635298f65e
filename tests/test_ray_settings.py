"""Rewarm's Ray settings travel to a cluster with the sweep's job (sweeps/settings.py).

tests/test_multinode.py checks that they arrive in Train workers on a real two-node cluster;
these check which settings are sent.
"""

import json

from sweeps.settings import PROCESS_SETTINGS as RAY_ENV_DEFAULTS, cluster_env_vars


def test_every_setting_is_sent_with_this_process_value(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # a user's own value wins over the default
    sent = cluster_env_vars()
    assert set(sent) == set(RAY_ENV_DEFAULTS)
    assert sent["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert sent["TUNE_GLOBAL_CHECKPOINT_S"] == "0"


def test_settings_a_submitted_job_sets_are_left_to_the_job(monkeypatch):
    # Ray refuses to merge two runtime_envs that set the same variable.
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "OTHER": "y"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    sent = cluster_env_vars()
    assert "RAY_TRAIN_V2_ENABLED" not in sent and "OTHER" not in sent
    assert set(sent) == set(RAY_ENV_DEFAULTS) - {"RAY_TRAIN_V2_ENABLED"}


def test_a_job_without_env_vars_gets_them_all(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert set(cluster_env_vars()) == set(RAY_ENV_DEFAULTS)
