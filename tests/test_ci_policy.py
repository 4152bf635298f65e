"""Under CI=true a test never passes by skipping: a missing service fails it, saying what is missing."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = '''
import pytest
from tests.conftest import require

def test_needs_a_missing_service():
    require(False, "the probe service")

def test_skips_by_itself():
    pytest.skip("no reason at all")
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])  # as `make test` runs
@pytest.mark.parametrize("ci,expected", [("true", "2 failed"), ("", "2 skipped")])
def test_missing_service_fails_under_ci_and_skips_outside(tmp_path, ci, expected, workers):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *workers,
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert expected in proc.stdout, proc.stdout[-2000:]
    assert "the probe service is missing" in proc.stdout
    if ci:
        assert "CI=true forbids skipping: Skipped: no reason at all" in proc.stdout, proc.stdout[-2000:]


def test_the_longest_first_files_exist():
    from tests.conftest import LONGEST_FIRST

    assert [name for name in LONGEST_FIRST if not (REPO / "tests" / name).is_file()] == []
