"""Shared fixtures: the toy world is built once into the normal cache and reused."""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY_TEST_CPUS = 2
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# The test files that take longest (2 cores, `make test`'s durations), run first. Under two
# test processes a file runs whole in one of them, in collection order: in alphabetical order
# the longest came last and one process sat idle for ~100 s while the other finished them.
# Order only: every test runs either way, and a file not named here starts after these.
LONGEST_FIRST = ("test_worker_kill.py", "test_sweep_resume.py", "test_ray_train.py", "test_multinode.py",
                 "test_tracking_outage.py", "test_report.py", "test_reproduce.py", "test_second_ray_instance.py",
                 "test_sweep_e2e.py", "test_bad_input.py", "test_parallel.py", "test_resume_safety.py",
                 "test_mlflow_server.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def pytest_configure(config):
    """Under pytest-xdist (`make test`), make Ray's auth token before the test processes start
    their clusters: the first local cluster on a machine writes ~/.ray/auth_token where it is
    missing, and two starting at once could each write their own and then read the other's."""
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        import subprocess

        subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
                       capture_output=True, check=True, timeout=120)


def require(available: bool, what: str) -> None:
    """A test's service (PostgreSQL, Chromium, ...) must be there. Outside CI a missing one skips
    the test, saying why; under CI=true it fails it: a CI run never passes by skipping."""
    if available:
        return
    message = f"{what} is missing (`make test` installs it from Debian's packages where it may)"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Backstop for `require`: under CI=true any skip, whoever raised it, is a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"CI=true forbids skipping: {reason}"


# Read by MLflow's client, and set by `mlflow.set_tracking_uri` for child processes to inherit.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks():
    """A test leaves MLFLOW_TRACKING_URI as it found it. It overrides every spec's store
    (README: the environment wins), so one leaked by a test (`mlflow.set_tracking_uri` sets
    it) sends every later test's runs, in whatever order tests run, to that store."""
    before = os.environ.get(TRACKING_URI_ENV)
    yield
    after = os.environ.get(TRACKING_URI_ENV)
    if after is not None and after != before:  # removing it (as module fixtures do) misdirects nothing
        if before is None:
            os.environ.pop(TRACKING_URI_ENV)
        else:
            os.environ[TRACKING_URI_ENV] = before
        pytest.fail(f"the test left {TRACKING_URI_ENV}={after!r} (was {before!r}); "
                    "use global_tracking_uri() or monkeypatch", pytrace=False)


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's global tracking URI (and the variable it sets) for a block, then as before."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env, global_uri = os.environ.get(TRACKING_URI_ENV), tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(global_uri)
        if env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = env


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """A real, empty SQLite MLflow store at the installed MLflow's schema, made once: creating
    one runs every MLflow migration (~1.7 s on 2 cores), and ~35 tests each need a new one."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def seed_mlflow_store(directory: Path, template: Path) -> Path:
    """`directory/mlflow.db` as a copy of the empty store (what a test's commands open there)."""
    import shutil

    target = Path(directory) / "mlflow.db"
    if not target.exists():
        shutil.copyfile(template, target)
    return target


@pytest.fixture(autouse=True)
def _tmp_path_has_an_empty_mlflow_store(request):
    """Every test's tmp_path starts with an empty store at tmp_path/mlflow.db, where its specs
    (`small_spec`) and commands put their tracking store."""
    if "tmp_path" in request.fixturenames:
        seed_mlflow_store(request.getfixturevalue("tmp_path"), request.getfixturevalue("empty_mlflow_store"))


@pytest.fixture(scope="session")
def toy_world():
    from trainers.toyworld import ToyWorldConfig, ensure_toy_world

    return ensure_toy_world(ToyWorldConfig())


@pytest.fixture(scope="session")
def rewarm_bin():
    return str(Path(sys.executable).with_name("rewarm"))


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray cluster for the whole test session (starting Ray costs ~8 s on 2 cores).

    `rewarm` subprocesses join it through `cluster_env`, as they would join a real cluster.
    Tests that need a cluster of their own (a second instance, several nodes, the CLI's own
    local cluster) start it in a subprocess instead (`private_ray`, tests/ray_cluster.py)."""
    import ray

    from sweeps.execution.cluster import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray()  # returns at once where a test already started Ray in this process
    yield ray
    ray.shutdown()


@pytest.fixture
def cluster_env(local_ray):
    """The environment of a `rewarm` subprocess that joins the session's cluster (RAY_ADDRESS),
    as a user's command joins their cluster: no Ray start or stop per command (~10 s on 2
    cores). Its tracking URI comes from the spec, never from the test's environment."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RAY_ADDRESS"] = local_ray.get_runtime_context().gcs_address
    return env


def _driver_job(gcs_address: str, driver_pid: int) -> str:
    from ray.util.state import list_jobs

    jobs = [j.job_id for j in list_jobs(address=gcs_address) if j.driver_info and j.driver_info.pid == str(driver_pid)]
    assert jobs, f"no Ray job has driver pid {driver_pid}"
    return jobs[0]


def job_actor_pids(gcs_address: str, driver_pid: int, classes: tuple[str, ...]) -> list[int]:
    """PIDs of the live actors of these classes (e.g. "RayTrainWorker") in the Ray job whose
    driver is `driver_pid` (a `rewarm` subprocess), by Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(address=gcs_address, limit=10000,
                         filters=[("job_id", "=", _driver_job(gcs_address, driver_pid)), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.class_name in classes]


SMALL_RUN = {
    "name": "small",
    "data": {"seq_len": 64, "val_sequences": 16},
    "training": {"global_batch_size": 8, "micro_batch_size": 4, "eval_every_tokens": 2048,
                 "checkpoint_every_tokens": 2048, "eval_batch_size": 16},
    "search_space": {"params": {"max_lr": 3e-3, "warmup_frac": 0.1, "replay_ratio": 0.25, "schedule": "cosine"}},
    "budget": {"tokens_per_trial": 512 * 24},  # 24 steps of 8 x 64 tokens
}


def changed(base: dict, changes: dict, sep: str = ".") -> dict:
    """A deep copy of a raw spec with `{"a.b.c": value}` set (missing sections are created)."""
    import copy

    raw = copy.deepcopy(base)
    for path, value in changes.items():
        node = raw
        keys = path.split(sep)
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def assert_divergence_recorded(spec, sweep: str) -> None:
    """In MLflow, the sweep's diverged trials are its max_lr=60 ones, stopped within two evals,
    closed FAILED and never ranked (the divergence tests of both kinds of trial)."""
    from sweeps.results.best import rank
    from sweeps.tracking.records import load_sweep
    from sweeps.tracking.store import open_client

    client = open_client(spec.tracking_uri())
    _, trials = load_sweep(client, sweep)
    diverged = [t for t in trials if t["status"] == "diverged"]
    assert diverged and {t["max_lr"] for t in diverged} == {60.0}
    eval_steps = spec.training.eval_every_tokens // spec.tokens_per_step
    assert all(t["step"] <= 2 * eval_steps for t in diverged)  # stopped within a few evals
    assert all(client.get_run(t["run_id"]).info.status == "FAILED" for t in diverged)
    assert {t["status"] for t in rank(trials)} == {"completed"}  # never ranked


def small_spec(tmp_path=None, **sections):
    """A tiny single-run spec on the default toy world; `sections` are merged in two levels
    deep, except `search_space.params`, which is replaced (so `{}` frees every knob)."""
    import copy

    from sweeps.config.loading import validate_spec

    raw = copy.deepcopy(SMALL_RUN)
    if tmp_path is not None:  # never the default store in the working directory (the repo)
        raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for key, value in sections.items():
        if isinstance(value, dict):
            node = raw.setdefault(key, {})
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(node.get(k), dict) and k != "params":
                    node[k] = {**node[k], **v}
                else:
                    node[k] = v
        else:
            raw[key] = value
    if tmp_path is not None:
        raw.setdefault("storage_path", str(tmp_path / "runs"))
    return validate_spec(raw)


@pytest.fixture(scope="session")
def resolved_small(toy_world):
    from sweeps.config.resolve import resolve

    return resolve(small_spec())


class PrivateRay:
    """A temp root for the local Ray cluster that a `rewarm` subprocess starts, so a test can
    kill exactly that cluster (after SIGKILLing its driver) without `ray stop`, which would
    also stop every other Ray cluster on the machine."""

    def __init__(self):
        import tempfile

        # Short path: Ray's unix socket paths live under it and must stay below 108 bytes.
        self.root = tempfile.mkdtemp(prefix="rw", dir="/tmp")

    def env(self, base: dict) -> dict:
        return {**{k: v for k, v in base.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": self.root}

    def kill(self) -> None:
        import shutil
        import subprocess
        import time

        for _ in range(3):
            subprocess.run(["pkill", "-9", "-f", self.root], capture_output=True)
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_ray():
    ray_ = PrivateRay()
    yield ray_
    ray_.kill()
