"""The replay mixer: exact shares over every window, determinism, and resumable state."""

import numpy as np
import pytest

from trainers.replay import ReplayMixer, ReplayState, upstream_total


def _blocks(n, offset):
    # Each block's first token names it, so batches can be traced back to their source.
    return (np.arange(n)[:, None] + offset) * np.ones((1, 4), dtype=np.int64)


DOWN, UP = _blocks(50, 0), _blocks(30, 1000)


@pytest.mark.parametrize("ratio", [0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1 / 3])
@pytest.mark.parametrize("batch", [1, 8, 16])
def test_realised_share_matches_ratio_in_every_window(ratio, batch):
    mixer = ReplayMixer(DOWN, UP, batch, ratio, seed=0)
    counts = []
    for _ in range(200):
        tokens, is_up = mixer.next_batch()
        assert (tokens[is_up, 0] >= 1000).all() and (tokens[~is_up, 0] < 1000).all()
        counts.append(int(is_up.sum()))
    cum = np.concatenate([[0], np.cumsum(counts)])
    for a in range(0, 200, 7):
        for b in range(a + 1, 201, 13):
            assert abs((cum[b] - cum[a]) - (b - a) * batch * ratio) <= 1.0


def test_upstream_total_is_rounded_exactly():
    assert [upstream_total(n, 16, 0.05) for n in range(6)] == [0, 1, 2, 2, 3, 4]


def test_every_sequence_is_used_once_per_epoch():
    mixer = ReplayMixer(DOWN, UP, 10, 0.0, seed=3)
    seen = np.concatenate([mixer.next_batch()[0][:, 0] for _ in range(5)])
    assert sorted(seen) == list(range(50))


def test_resumed_mixer_continues_identically():
    full = ReplayMixer(DOWN, UP, 16, 0.25, seed=7)
    expected = [full.next_batch()[0] for _ in range(40)]
    first = ReplayMixer(DOWN, UP, 16, 0.25, seed=7)
    for _ in range(13):
        first.next_batch()
    state = ReplayState.model_validate_json(first.state.model_dump_json())  # as a checkpoint holds it
    resumed = ReplayMixer(DOWN, UP, 16, 0.25, seed=7, state=state)
    for i in range(13, 40):
        np.testing.assert_array_equal(resumed.next_batch()[0], expected[i])


def test_seed_changes_order_but_not_composition():
    a = ReplayMixer(DOWN, UP, 16, 0.25, seed=1)
    b = ReplayMixer(DOWN, UP, 16, 0.25, seed=2)
    ta, ua = a.next_batch()
    tb, ub = b.next_batch()
    assert (ua == ub).all() and not np.array_equal(ta, tb)


def test_invalid_ratio_is_rejected():
    with pytest.raises(ValueError, match="replay_ratio"):
        ReplayMixer(DOWN, UP, 4, 1.5, seed=0)


def test_each_rank_reads_only_its_rows_of_the_same_batch():
    """Ranks draw the same global batch; rank r's rows equal rows r of the whole batch."""
    down, up = np.arange(40 * 3).reshape(40, 3), -np.arange(1, 31 * 3 + 1).reshape(31, 3)
    whole = ReplayMixer(down, up, batch_size=8, ratio=0.3, seed=5)
    ranks = [ReplayMixer(down, up, batch_size=8, ratio=0.3, seed=5) for _ in range(2)]
    for _ in range(12):
        tokens, is_up = whole.next_batch()
        parts = [m.next_batch(rows=slice(4 * r, 4 * r + 4)) for r, m in enumerate(ranks)]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), tokens)
        assert all(np.array_equal(p[1], is_up) for p in parts)
    assert ranks[0].state == ranks[1].state == whole.state
