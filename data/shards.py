"""The on-disk token shard: a 256 x int32 little-endian header, then the tokens.

Header: [0] magic, [1] version, [2] token count, [3] bytes per token (2 = uint16,
4 = uint32); the rest is zero. llm.c / modded-nanogpt shards (magic 20240520,
version 1, uint16 tokens) are read as they are. Shards are memory-mapped, never
read whole into RAM.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from gpt.errors import GPTError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC = 20261128
VERSION = 1
LLMC_MAGIC = 20240520
LLMC_VERSION = 1
_DTYPES = {2: np.uint16, 4: np.uint32}


def token_dtype(vocab_size: int) -> type:
    """uint16 when every id fits, else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ShardWriter:
    """Append tokens to one shard, never holding it in memory; the header is filled in at `close()`.

    The file is written under a temporary name and renamed into place when
    complete, so a crash never leaves a shard that looks valid but is short.
    """

    def __init__(self, path: str | Path, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = np.dtype(token_dtype(vocab_size)).newbyteorder("<")
        self.count = 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._file.write(bytes(HEADER_BYTES))

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        self._file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.count += int(tokens.size)

    def close(self) -> None:
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:4] = (MAGIC, VERSION, self.count, self.dtype.itemsize)
        self._file.seek(0)
        self._file.write(header.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write a shard atomically (temporary file, fsync, rename)."""
    writer = ShardWriter(path, vocab_size)
    writer.write(tokens)
    writer.close()


def read_header(path: str | Path) -> tuple[int, type]:
    """(token count, token dtype) of a shard, checking magic, version and file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as err:
        raise GPTError(f"cannot read shard {path}: {err}.") from None
    if len(raw) < HEADER_BYTES:
        raise GPTError(f"shard {path} is truncated: {len(raw)} bytes, shorter than its {HEADER_BYTES}-byte header. "
                       "Re-run data/prepare.py for this dataset.")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic == MAGIC:
        if version != VERSION:
            raise GPTError(f"shard {path} has format version {version}; this code reads version {VERSION}.")
        width = int(header[3])
        if width not in _DTYPES:
            raise GPTError(f"shard {path} is corrupt: its header says {width} bytes per token (expected 2 or 4).")
    elif magic == LLMC_MAGIC:
        if version != LLMC_VERSION:
            raise GPTError(f"shard {path} is an llm.c shard of version {version}; only version {LLMC_VERSION} (uint16) is read.")
        width = 2
    else:
        raise GPTError(f"shard {path} is not a token shard (magic {magic}, expected {MAGIC} or llm.c's {LLMC_MAGIC}). "
                       "Re-run data/prepare.py for this dataset.")
    expected = HEADER_BYTES + count * width
    if count < 0 or size != expected:
        raise GPTError(f"shard {path} is truncated or corrupt: its header promises {count} tokens "
                       f"({expected} bytes) but the file has {size} bytes. Re-run data/prepare.py for this dataset.")
    return count, _DTYPES[width]


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """Where a file's tokens lie: `tokens` values of `dtype` (little-endian) from byte `offset` on.

    Our shards and llm.c's have a 1 KB header (offset 1024); nanoGPT's
    train.bin/val.bin have none (offset 0, uint16).
    """

    path: Path
    tokens: int
    dtype: np.dtype
    offset: int = HEADER_BYTES


def describe_shard(path: str | Path) -> ShardFile:
    """The ShardFile of a headed shard, after validating its header (reads 1 KB, maps nothing)."""
    count, dtype = read_header(path)
    return ShardFile(Path(path), count, np.dtype(dtype).newbyteorder("<"))


def open_shard(path: str | Path) -> np.memmap:
    """Memory-map a shard's tokens (read-only), after validating its header."""
    count, dtype = read_header(path)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,))
