"""Write a token stream as fixed-size shards, then move its tail into the val split.

The train/val split is by position, as nanoGPT's: the first (1 - val_fraction)
of the tokens are train, the rest val. The total is known only at the end of a
streamed corpus, so every token is first written to train shards; then the tail
is copied into val shards, the train shard it began in is cut, and the train
shards after it are removed. Only the val tokens are written twice, and memory
stays at one copy buffer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.shards import ShardWriter, open_shard

COPY_TOKENS = 1 << 24


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class SplitWriter:
    """Appends tokens to `{split}_000000.bin`, `{split}_000001.bin`, ..., `shard_tokens` tokens each."""

    def __init__(self, out: Path, split: str, vocab_size: int, shard_tokens: int):
        self.out, self.split, self.vocab_size, self.shard_tokens = out, split, vocab_size, shard_tokens
        self.names: list[str] = []
        self.tokens = 0
        self._writer: ShardWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._writer is None or self._writer.count == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self._writer.count
            self._writer.write(tokens[:room])
            self.tokens += min(room, tokens.size)
            tokens = tokens[room:]

    def close(self) -> list[str]:
        """Finish the last shard (an empty split still gets one, empty, shard); returns the shard names."""
        if self._writer is None:
            self._next_shard()
        self._writer.close()
        self._writer = None
        return self.names

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.names.append(shard_name(self.split, len(self.names)))
        self._writer = ShardWriter(self.out / self.names[-1], self.vocab_size)


def move_tail_to_val(out: Path, train_names: list[str], shard_tokens: int, n_train: int,
                     vocab_size: int) -> tuple[list[str], list[str]]:
    """Turn tokens [n_train, end) of the train shards into val shards; returns (train names, val names)."""
    val = SplitWriter(out, "val", vocab_size, shard_tokens)
    first = n_train // shard_tokens
    for i in range(first, len(train_names)):
        tokens = open_shard(out / train_names[i])
        start = n_train - i * shard_tokens if i == first else 0
        for at in range(start, len(tokens), COPY_TOKENS):
            val.write(np.asarray(tokens[at:at + COPY_TOKENS]))
        del tokens
    val_names = val.close()
    keep = n_train - first * shard_tokens  # tokens of the boundary shard that stay in train
    if keep:
        tokens = open_shard(out / train_names[first])
        cut = ShardWriter(out / train_names[first], vocab_size)
        for at in range(0, keep, COPY_TOKENS):
            cut.write(np.asarray(tokens[at:min(at + COPY_TOKENS, keep)]))
        del tokens
        cut.close()
    kept = first + (1 if keep else 0)
    for name in train_names[kept:]:
        (out / name).unlink()
    return train_names[:kept], val_names
