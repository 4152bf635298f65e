"""Training from a stream (data.<domain>.streaming without max_documents): the driver prepares only
validation blocks; workers read, tokenise and pack as they train; resume is exact."""

import json
import shutil

import numpy as np
import pytest

from sweeps.config.resolve import resolve, trial_config
from tests.conftest import small_spec
from trainers.checkpoint_files import read_state
from trainers.data import DataError, DataSource, prepare_domain
from trainers.local import run_distributed, run_in_process

KNOBS = {"max_lr": 3e-3, "warmup_frac": 0.1, "replay_ratio": 0.25, "schedule": "cosine"}


@pytest.fixture(scope="module")
def streamed(toy_world, tmp_path_factory):
    """The toy downstream corpus split into 4 JSONL shards, streamed."""
    root = tmp_path_factory.mktemp("stream")
    # Every document starts with its own number, so a held-out document is recognisable anywhere.
    docs = [json.dumps({"text": f"{i:06d} {json.loads(line)['text']}"})
            for i, line in enumerate(toy_world.downstream.read_text().splitlines())]
    per = len(docs) // 4
    for i in range(4):  # in stream order: shard 0 holds the first documents (the held-out ones)
        (root / f"part{i}.jsonl").write_text("\n".join(docs[i * per:(i + 1) * per]) + "\n")
    spec = small_spec(data={"downstream": {"path": str(root), "streaming": True}})
    return resolve(spec)


def _cfg(resolved, **loop):
    cfg = trial_config(resolved, KNOBS)
    return cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"total_steps": 12, "eval_every": 4,
                                                                       "checkpoint_every": 4, **loop})})


def _steps(run):
    return [(s["step"], s["loss"], s["lr"], s["grad_norm"], s["upstream_seqs"]) for s in run.steps]


def test_the_driver_prepares_validation_only(streamed, toy_world, tmp_path):
    down = streamed.downstream
    assert down.train is None and down.stream is not None and np.load(down.val).shape[0] == down.val_sequences
    assert down.stream.skip_documents > 0  # the held-out documents are skipped by training
    with pytest.raises(DataError, match="whole stream .* gives only"):
        tiny = tmp_path / "tiny.jsonl"
        tiny.write_text(json.dumps({"text": "a few words"}) + "\n")
        prepare_domain(DataSource(path=str(tiny), streaming=True), toy_world.tokenizer, 32, 0.05, 16, tmp_path)


def test_streamed_training_learns_and_resumes_exactly(streamed, tmp_path):
    full = run_in_process(_cfg(streamed), tmp_path / "full")
    assert full.reports[-1]["L_down"] < streamed.base_reference.L_down
    first = run_in_process(_cfg(streamed, stop_after_step=4), tmp_path / "first")
    state = read_state(first.checkpoints[-1])
    assert state.stream_positions and "downstream" in state.stream_positions[0]
    resumed = run_in_process(_cfg(streamed), tmp_path / "second", resume_from=first.checkpoints[-1])
    assert _steps(first) + _steps(resumed) == _steps(full)


@pytest.mark.parametrize("world", [1, 2])
def test_no_held_out_document_reaches_training_on_any_rank(streamed, world):
    from trainers.streaming import StreamBlocks

    import re

    from transformers import AutoTokenizer

    down = streamed.downstream
    tok = AutoTokenizer.from_pretrained(down.stream.tokenizer)
    seq_len = np.load(down.val).shape[1]
    held_out = down.stream.skip_documents
    numbers = []
    for rank in range(world):
        text = tok.decode(StreamBlocks(down.stream, seq_len, rank, world).take(100).reshape(-1).tolist())
        numbers.append({int(n) for n in re.findall(r"(?<!\d)(\d{6})(?!\d)", text)})
    assert all(numbers) and min(min(n) for n in numbers) >= held_out  # no held-out document is trained on
    assert not (world == 2 and numbers[0] & numbers[1])  # and no document twice


@pytest.mark.slow
def test_two_ranks_read_their_own_shares_and_resume_exactly(streamed, tmp_path):
    full = run_distributed(_cfg(streamed), 2, tmp_path / "full")
    first = run_distributed(_cfg(streamed, stop_after_step=4), 2, tmp_path / "first")
    positions = read_state(first.checkpoints[-1]).stream_positions
    assert len(positions) == 2 and positions[0] != positions[1]  # each rank has its own place
    resumed = run_distributed(_cfg(streamed), 2, tmp_path / "second", resume_from=first.checkpoints[-1])
    assert _steps(first) + _steps(resumed) == _steps(full)
