"""Exact resume in one process: stop after step k, resume, get the uninterrupted run bitwise."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sweeps.config.resolve import trial_config
from tests.conftest import small_spec
from trainers.checkpoint_files import CheckpointError, read_state, verify_checkpoint
from trainers.local import run_in_process

KNOBS = {"max_lr": 3e-3, "warmup_frac": 0.1, "replay_ratio": 0.25, "schedule": "cosine"}


def _cfg(resolved, **loop):
    cfg = trial_config(resolved, KNOBS)
    return cfg.model_copy(update={"loop": cfg.loop.model_copy(update=loop)}) if loop else cfg


def test_stop_and_resume_equals_uninterrupted(resolved_small, tmp_path):
    cfg = _cfg(resolved_small)
    full = run_in_process(cfg, tmp_path / "full")
    first = run_in_process(_cfg(resolved_small, stop_after_step=10), tmp_path / "first")
    assert first.reports[-1]["status"] == "stopped" and first.steps[-1]["step"] == 10
    resumed = run_in_process(cfg, tmp_path / "second", resume_from=first.checkpoints[-1])
    assert resumed.steps[0]["step"] == 11
    stitched = first.steps + resumed.steps
    # Bitwise on CPU: same weights, optimizer moments, LR step, data order and RNG.
    assert [(s["step"], s["loss"], s["lr"], s["grad_norm"], s["upstream_seqs"]) for s in stitched] == \
           [(s["step"], s["loss"], s["lr"], s["grad_norm"], s["upstream_seqs"]) for s in full.steps]
    a = load_file(str(full.checkpoints[-1] / "model.safetensors"))
    b = load_file(str(resumed.checkpoints[-1] / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.reports[-1]["L_up"] == resumed.reports[-1]["L_up"]
    assert full.reports[-1]["status"] == resumed.reports[-1]["status"] == "completed"


def test_checkpoint_holds_the_whole_training_state(resolved_small, tmp_path):
    run = run_in_process(_cfg(resolved_small, stop_after_step=8), tmp_path / "c")
    ckpt = run.checkpoints[-1]
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt", "rng.pt", "state.json", "MANIFEST.json"}
    state = read_state(ckpt)
    assert state.step == 8 and state.tokens_seen == 8 * 8 * 64
    assert state.replay.steps == 8 and state.replay.upstream_consumed == 16  # 25% of 64 sequences
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert optim["state"] and all(int(s["step"]) == 8 for s in optim["state"].values())


def test_corrupt_or_incomplete_checkpoints_are_refused(resolved_small, tmp_path):
    run = run_in_process(_cfg(resolved_small, stop_after_step=8), tmp_path / "c")
    ckpt = run.checkpoints[-1]
    verify_checkpoint(ckpt)
    with open(ckpt / "optimizer.pt", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CheckpointError, match="optimizer.pt is corrupt or truncated"):
        verify_checkpoint(ckpt)
    (ckpt / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete write"):
        run_in_process(_cfg(resolved_small), tmp_path / "d", resume_from=ckpt)


def test_divergence_ends_the_run_with_a_status(resolved_small, tmp_path):
    cfg = trial_config(resolved_small, {**KNOBS, "max_lr": 50.0, "warmup_frac": 0.0})
    run = run_in_process(cfg)
    last = run.reports[-1]
    assert last["status"] == "diverged"
    assert last["step"] < cfg.loop.total_steps
    assert last["objective"] < -100


def test_loss_falls_and_objective_is_reported(resolved_small):
    run = run_in_process(_cfg(resolved_small))
    losses = [s["loss"] for s in run.steps]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    last = run.reports[-1]
    base = resolved_small.base_reference
    assert last["gain"] == pytest.approx(base.L_down - last["L_down"])
    assert last["forgetting"] == pytest.approx(last["L_up"] - base.L_up)
    assert last["objective"] == pytest.approx(last["gain"] - max(last["forgetting"], 0))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(resolved_small, tmp_path):
    from trainers.worker import pick_checkpoint

    run = run_in_process(_cfg(resolved_small, stop_after_step=12), tmp_path / "run")
    # The run dir as Ray lays it out: checkpoint_<time> directories, newest last by name.
    run_dir = tmp_path / "raylike"
    run_dir.mkdir()
    for i, ckpt in enumerate(run.checkpoints):
        ckpt.rename(run_dir / f"checkpoint_2026-01-01_00-00-{i:02d}")
    older, newest = sorted(run_dir.iterdir())[-2:]
    assert pick_checkpoint(newest, run_dir) == newest
    with open(newest / "model.safetensors", "r+b") as fh:
        fh.truncate(10)
    messages = []
    assert pick_checkpoint(newest, run_dir, log=messages.append) == older
    assert "model.safetensors is corrupt" in messages[0] and str(older) in messages[0]
    # Resuming from the older checkpoint still reproduces the uninterrupted run exactly.
    full = run_in_process(_cfg(resolved_small))
    resumed = run_in_process(_cfg(resolved_small), resume_from=older)
    done = read_state(older).step
    assert [(s["step"], s["loss"]) for s in resumed.steps] == [(s["step"], s["loss"]) for s in full.steps[done:]]
    for ckpt in run_dir.iterdir():
        (ckpt / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        pick_checkpoint(newest, run_dir)


def test_checkpoint_write_is_atomic(resolved_small, tmp_path, monkeypatch):
    """A crash while writing leaves no directory that looks like a complete checkpoint."""
    import trainers.checkpoint as ck

    run = run_in_process(_cfg(resolved_small, stop_after_step=4), tmp_path / "run")
    good = run.checkpoints[-1]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", crash)  # fail mid-write, after the directory exists
    target = tmp_path / "new" / "checkpoint"
    with pytest.raises(OSError):
        from trainers.checkpoint_files import TrainState
        ck.save_checkpoint(target, torch.nn.Linear(2, 2), torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()),
                           TrainState(step=1, tokens_seen=1, replay={}), [])
    assert not target.exists()  # only a .partial directory, never the final name
    verify_checkpoint(good)
