"""Exact, checkpointable replay mixing of upstream into downstream batches.

Every optimizer step takes `batch_size` sequences. After `n` steps exactly
`round(n * batch_size * ratio)` of them came from upstream, so over any window of steps
the realised upstream share matches the ratio to within one sequence (docs/ARCHITECTURE.md). It is
compute-equivalent: replay displaces downstream sequences, the step size is unchanged.

Each domain is read through its own stream of seeded epoch permutations, so which
sequence comes next is a pure function of (seed, domain, sequences consumed). The whole
mixer state is three integers, which is what makes resume exact.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict


class ReplayState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = 0
    upstream_consumed: int = 0
    downstream_consumed: int = 0


def upstream_total(steps: int, batch_size: int, ratio: float) -> int:
    """Upstream sequences in the first `steps` steps (round half up, exact in integers)."""
    return int(np.floor(steps * batch_size * ratio + 0.5))


def _packed(blocks) -> bool:
    return isinstance(blocks, np.ndarray)


def _seq_len(blocks) -> int:
    return blocks.shape[1] if _packed(blocks) else blocks.seq_len


def stream_positions(mixer: "ReplayMixer") -> dict:
    """This rank's position in each streamed domain ({} when nothing is streamed)."""
    return {name: blocks.position() for name, blocks in (("upstream", mixer.upstream), ("downstream", mixer.downstream))
            if not _packed(blocks)}


class _EpochStream:
    """Indices 0..n-1 in a fresh seeded permutation each epoch."""

    def __init__(self, n: int, seed: int, domain_id: int):
        self.n, self.seed, self.domain_id = n, seed, domain_id
        self._epoch, self._perm = -1, None

    def take(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, pos = divmod(start + i, self.n)
            if epoch != self._epoch:
                self._perm = np.random.default_rng([self.seed, self.domain_id, epoch]).permutation(self.n)
                self._epoch = epoch
            out[i] = self._perm[pos]
        return out


class ReplayMixer:
    """Builds the global batch of each step from downstream and upstream blocks.

    A domain is either packed blocks (an array, read in seeded epoch permutations: every rank
    computes the same global batch and reads its own rows) or a stream
    (`trainers/streaming.py: StreamBlocks`, one per rank: a rank's rows of that domain are the
    next blocks of its own share of the stream). Which rows are upstream is the same either way.
    """

    def __init__(self, downstream, upstream, batch_size: int, ratio: float,
                 seed: int, state: ReplayState | None = None):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"replay_ratio must be in [0, 1], got {ratio}")
        if _seq_len(downstream) != _seq_len(upstream):
            raise ValueError("upstream and downstream blocks must have the same sequence length")
        self.downstream, self.upstream = downstream, upstream
        self.batch_size, self.ratio = batch_size, ratio
        self._down = _EpochStream(len(downstream), seed, 1) if _packed(downstream) else None
        self._up = _EpochStream(len(upstream), seed, 0) if _packed(upstream) else None
        self.state = state.model_copy() if state else ReplayState()

    def upstream_count(self, step: int) -> int:
        return upstream_total(step + 1, self.batch_size, self.ratio) - upstream_total(step, self.batch_size, self.ratio)

    def next_batch(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Return (tokens of the batch's `rows` [r, L], is_upstream [B] of the whole batch) for the
        next step and advance the state. Every rank draws the same batch but reads only its own
        rows from the memory-mapped blocks."""
        s = self.state
        n_up = self.upstream_count(s.steps)
        n_down = self.batch_size - n_up
        # Spread replayed sequences over the batch instead of bunching them at the front,
        # so each rank's shard and each micro-batch sees its share.
        is_up = np.zeros(self.batch_size, dtype=bool)
        if n_up:
            is_up[np.linspace(0, self.batch_size - 1, n_up).round().astype(int)] = True
        mine = np.arange(self.batch_size)[rows]
        tokens = np.empty((len(mine), _seq_len(self.downstream)), dtype=np.int64)
        for flag, blocks, order, consumed, n in ((True, self.upstream, self._up, s.upstream_consumed, n_up),
                                                 (False, self.downstream, self._down, s.downstream_consumed, n_down)):
            slots = np.flatnonzero(is_up[mine] == flag)  # this rank's rows from this domain
            if order is None:  # a stream: this rank's next blocks
                if len(slots):
                    tokens[slots] = blocks.take(len(slots))
                continue
            index = np.empty(self.batch_size, dtype=np.int64)
            index[is_up == flag] = order.take(consumed, n)  # block index in its own domain
            tokens[slots] = blocks[index[mine[slots]]]  # reads only these rows of the memory map
        s.steps += 1
        s.upstream_consumed += n_up
        s.downstream_consumed += n_down
        return tokens, is_up
