"""A private PostgreSQL server for tests (Debian's postgresql package, on a free loopback port).

`make test` installs the package where it is missing (see the Makefile's `services` target);
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.mlflow_server import free_port


def postgres_bin_dir() -> Path | None:
    # Debian keeps the whole server in one versioned directory; prefer it to stray copies on PATH.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    for path in candidates + ([found] if found else []):
        directory = Path(path).parent
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "psql")):
            return directory
    return None


class PostgresServer:
    def __init__(self):
        self.bin = postgres_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="rwpg", dir="/tmp"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str) -> str:
        full = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-1500:]}")
        return proc.stdout

    def start(self) -> "PostgresServer":
        data = self.root / "data"
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")
        deadline = time.time() + 30
        while True:
            try:
                self.sql("select 1")
                return self
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def sql(self, statement: str, db: str = "postgres") -> str:
        return self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-d", db, "-tA", "-c", statement)

    def uri(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
