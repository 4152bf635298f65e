"""A real `mlflow server` process for tests (SQLite or Postgres behind the server, loopback only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sweeps.tracking.store import server_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None, backend_uri: str | None = None,
                 empty_store: Path | None = None):
        """`empty_store`: an empty SQLite store (conftest's `empty_mlflow_store`) the server's own
        SQLite store starts as, so its first start does not run every migration (~1.7 s)."""
        self.root, self.port = root, port or free_port()
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        if empty_store is not None and backend_uri is None and not (root / "server.db").exists():
            import shutil

            shutil.copyfile(empty_store, root / "server.db")
        self.proc: subprocess.Popen | None = None
        self.log = None  # the server's log file, reopened (appending) at each start

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90) -> "MlflowServer":
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        if self.log is not None:
            self.log.close()
        self.log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.root / "artifacts")],
            # Started as Rewarm starts one (server_env): without MLflow's GenAI job runner, 26 CPU-s
            # more per start on 2 cores (33.7 vs 7.3 CPU-s over its first 19 s), starved from the
            # sweep under test.
            env={**os.environ, **server_env()}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not become healthy")

    def kill(self) -> None:
        """Down at once, as a crashed server is (a graceful stop can take seconds to drain)."""
        if self.proc and self.proc.poll() is None:
            import os
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            import os
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
