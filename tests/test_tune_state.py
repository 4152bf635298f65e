"""Tune's experiment-state saves and uploads alternate (trainers/ray_compat.py).

The unpatched case documents the Ray race that printed a traceback in CI: if Ray fixes it,
that assertion fails and ray_compat.serialize_state_uploads can go.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _drive(mode):
    out = subprocess.run([sys.executable, "-m", "tests.tune_state_race", mode], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_saves_wait_for_the_upload_in_flight():
    result = _drive("patched")
    assert result["warnings"] == []
    assert result["storage_has_last_state"]
    assert result["stray_tmp_files"] == []


@pytest.mark.slow
def test_unpatched_tune_races_its_own_upload():
    # A race: it shows in most runs of 300 saves on this machine (2 to 97 failed uploads
    # per run measured), so up to three runs are given to show it.
    runs = [_drive("unpatched") for _ in range(3)]
    assert any(any("sync" in w.lower() for w in r["warnings"]) for r in runs), runs
