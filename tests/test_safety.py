"""Untrusted input never runs code: specs are read with safe YAML loading, and checkpoints hold
weights in safetensors and everything else behind `torch.load(weights_only=True)`."""

import json
import pickle

import pytest
import torch

from sweeps.config.loading import SpecError, load_spec
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.checkpoint_files import MANIFEST, CheckpointError, TrainState, sha256
from trainers.replay import ReplayState


class _Payload:
    """Unpickling this runs a command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_spec_with_a_python_object_tag_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(spec)
    assert not marker.exists()


def test_checkpoint_with_a_code_carrying_pickle_is_refused_without_running_it(tmp_path):
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, optimizer,
                           TrainState(step=1, tokens_seen=8, replay=ReplayState()), [{}])
    # An attacker who can write the checkpoint can also rewrite its manifest: integrity
    # checks pass, so only the restricted unpickler stands in the way.
    marker = tmp_path / "pwned"
    with open(ckpt / "optimizer.pt", "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["optimizer.pt"] = {"sha256": sha256(ckpt / "optimizer.pt"), "bytes": (ckpt / "optimizer.pt").stat().st_size}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(ckpt, torch.nn.Linear(4, 4), torch.optim.AdamW(model.parameters()), 0, torch.device("cpu"))
    assert not marker.exists()


def _external_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.mark.ray
def test_local_ray_dashboard_listens_on_loopback_only(local_ray):
    import socket

    from ray._private.worker import get_dashboard_url

    host, port = get_dashboard_url().removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # it is up on loopback
    # What the socket is bound to, from the kernel's table: loopback only.
    import psutil

    bound = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)}
    assert bound == {"127.0.0.1"}, bound
    ip = _external_ip()
    if ip is not None:  # and, where the machine has another address, nothing answers there
        with pytest.raises(OSError):
            socket.create_connection((ip, int(port)), timeout=5).close()
