"""Training blocks read from a stream on the workers, with a position a checkpoint can restore.

For corpora too large to prepare up front (`data.<domain>.streaming: true` without
`max_documents`). Every rank reads the stream after the documents held out for validation
and keeps every world-th document (rank r the r-th), tokenising only its own, and cuts its
token stream into blocks. Not `split_dataset_by_node`: with whole shards per rank, a `skip`
before it is split over the shards too (each rank would skip n/world of its own shards), and
the held-out documents, all in the first shard, would reach training. Reading the others'
documents costs I/O, not tokenisation. The position is the dataset's own `state_dict()`
(taken after whole documents), the documents seen and the tokens of the last document not
yet used: restoring them gives exactly the blocks an uninterrupted run would have read next.
The stream is read in its stored order (hub corpora are shuffled when written; a shuffle
buffer's contents cannot be checkpointed by `datasets`).
"""

from __future__ import annotations

import numpy as np

from trainers.data import DataError, StreamedTrain, tokenize_documents, open_stream


class StreamBlocks:
    """Sequential [seq_len] blocks of one rank's share of a streamed domain."""

    def __init__(self, spec: StreamedTrain, seq_len: int, rank: int, world: int, position: dict | None = None):
        from transformers import AutoTokenizer

        self.spec, self.seq_len, self.rank, self.world = spec, seq_len, rank, world
        self.tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
        self.dataset = open_stream(spec.source).skip(spec.skip_documents)
        self.buffer: list[int] = []
        self.documents = 0  # documents of the stream seen after the held-out ones, all ranks' shares
        if position is not None:
            self.dataset.load_state_dict(position["dataset"])
            self.buffer, self.documents = list(position["leftover"]), position["documents"]
        self._rows = iter(self.dataset)

    def take(self, count: int) -> np.ndarray:
        """The next `count` blocks [count, seq_len]."""
        need = count * self.seq_len
        field = self.spec.source.text_field
        while len(self.buffer) < need:
            try:
                text = next(self._rows)[field]
            except StopIteration:
                raise DataError(f"data source {self.spec.source.path!r}: the stream ended after {self.documents} "
                                f"training documents; the budget needs more tokens than it has "
                                f"(lower budget.tokens_per_trial or prepare it with max_documents)") from None
            self.documents += 1
            if (self.documents - 1) % self.world == self.rank and text:
                self.buffer.extend(tokenize_documents({"text": [text]}, self.tokenizer)["input_ids"][0])
        out, self.buffer = self.buffer[:need], self.buffer[need:]
        return np.asarray(out, dtype=np.int64).reshape(count, self.seq_len)

    def position(self) -> dict:
        """Where the next block starts: plain JSON, saved in the checkpoint's state."""
        return {"dataset": self.dataset.state_dict(), "leftover": list(self.buffer), "documents": self.documents}
