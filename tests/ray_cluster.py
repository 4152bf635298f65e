"""A real multi-node Ray cluster on loopback for tests: `ray start --head` plus more `ray start`
nodes, each with its own CPUs and resources (as on a cluster of machines, but one host).

It lives in a private temp root so that stopping it kills exactly its processes (`ray stop`
would stop every Ray cluster on the machine, including the one the test session uses).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, nodes: list[dict]):
        """nodes: per node, {"num_cpus": n, "resources": {...}}; the first is the head."""
        self.nodes = nodes
        # Short path: Ray's unix socket paths live under it and must stay below 108 bytes.
        self.root = tempfile.mkdtemp(prefix="rwc", dir="/tmp")
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, base: dict | None = None) -> dict:
        # Rewarm's Ray settings are left out, as on a real cluster whose nodes never imported
        # rewarm: the sweep must bring them itself (sweeps/settings.py).
        from sweeps.settings import PROCESS_SETTINGS as RAY_ENV_DEFAULTS

        from trainers.ray_compat import API_SERVER_ADDRESS_ENV

        dropped = {"RAY_ADDRESS", *RAY_ENV_DEFAULTS}
        env = {k: v for k, v in (base or os.environ).items() if k not in dropped}
        # This cluster's own API server, for its processes and clients. On one host beside other
        # Ray instances (the test processes' own clusters), Train's placement-group cleaner,
        # asking the State API with no address whether a controller lives, could not tell which
        # instance to ask and would never free a stopped trial's placement group (as init_ray
        # says for local clusters); separate machines have one instance each. It also replaces
        # the value init_ray leaves naming the last local cluster of this process.
        env[API_SERVER_ADDRESS_ENV] = self.dashboard_url
        # The cluster's processes (and a Ray job's entrypoint) find this venv's python and `rewarm`.
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_TMPDIR"] = self.root
        # `ray start` enables token auth (~/.ray/auth_token); every client of the cluster must send it.
        env["RAY_AUTH_MODE"] = "token"
        return env

    def start(self) -> "LocalRayCluster":
        head, *others = self.nodes
        self._ray("start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                  f"--temp-dir={self.root}", *self._node_args(head))
        for i, node in enumerate(others, 1):
            # Its own temp dir, as on a separate machine: nodes sharing one would share the
            # runtime-env cache, and one node's cleanup would delete a job's working dir
            # that another node is still running in.
            node_root = Path(self.root) / f"n{i}"
            node_root.mkdir()
            self._ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                      f"--temp-dir={node_root}", *self._node_args(node))
        self.wait_for_nodes(len(self.nodes))
        return self

    def _node_args(self, node: dict) -> list[str]:
        # Every node on one host needs its own agent ports (on real machines the defaults do).
        return [f"--num-cpus={node['num_cpus']}", "--num-gpus=0",
                f"--resources={json.dumps(node.get('resources', {}))}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    def _ray(self, *args: str) -> None:
        proc = subprocess.run([str(BIN / "ray"), *args], env=self.env(), capture_output=True, text=True, timeout=180)
        if proc.returncode:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")

    def node_ids(self) -> list[str]:
        """Alive node ids, read through a separate driver (the test process stays off the cluster)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps(sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])))" % self.address)
        proc = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def head_node_id(self) -> str:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
                "n['Resources'].get('node:__internal_head__')]))" % self.address)
        proc = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        (head,) = json.loads(proc.stdout.strip().splitlines()[-1])
        return head

    def wait_for_nodes(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while True:
            ids = self.node_ids()
            if len(ids) >= n:
                return
            if time.time() > deadline:
                raise RuntimeError(f"only {len(ids)} of {n} Ray nodes came up")
            time.sleep(1)

    def stop(self) -> None:
        for _ in range(3):
            subprocess.run(["pkill", "-9", "-f", self.root], capture_output=True)
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)
