"""Training blocks read from a stream on the workers, with a position a checkpoint can restore.

For corpora too large to prepare up front (`data.<domain>.streaming: true` without
`max_documents`). Each rank reads its own share of the stream (`split_dataset_by_node`: whole
shards when the stream has a multiple of world-size shards, else every world-th document),
skipping the documents held out for validation, tokenises each document as it arrives and
cuts the token stream into blocks. Its position is the dataset's own `state_dict()` (taken
after whole documents) plus the tokens of the last document not yet used: restoring both
gives exactly the blocks an uninterrupted run would have read next. The stream is read in
its stored order (hub corpora are shuffled when written; a shuffle buffer's contents cannot
be checkpointed by `datasets`).
"""

from __future__ import annotations

import numpy as np

from trainers.data import DataError, StreamedTrain, tokenize_documents, open_stream


class StreamBlocks:
    """Sequential [seq_len] blocks of one rank's share of a streamed domain."""

    def __init__(self, spec: StreamedTrain, seq_len: int, rank: int, world: int, position: dict | None = None):
        from datasets.distributed import split_dataset_by_node
        from transformers import AutoTokenizer

        self.spec, self.seq_len = spec, seq_len
        self.tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
        stream = open_stream(spec.source).skip(spec.skip_documents)
        self.dataset = split_dataset_by_node(stream, rank=rank, world_size=world) if world > 1 else stream
        self.buffer: list[int] = []
        self.documents = 0
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
                                f"training documents on this worker; the budget needs more tokens than it has "
                                f"(lower budget.tokens_per_trial or prepare it with max_documents)") from None
            self.documents += 1
            if text:
                self.buffer.extend(tokenize_documents({"text": [text]}, self.tokenizer)["input_ids"][0])
        out, self.buffer = self.buffer[:need], self.buffer[need:]
        return np.asarray(out, dtype=np.int64).reshape(count, self.seq_len)

    def position(self) -> dict:
        """Where the next block starts: plain JSON, saved in the checkpoint's state."""
        return {"dataset": self.dataset.state_dict(), "leftover": list(self.buffer), "documents": self.documents}
