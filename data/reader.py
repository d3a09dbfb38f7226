"""Copy token windows out of a split's shards through lazy, bounded memory maps.

A shard is mapped the first time a window is read from it, so a job over 1,000
shards opens none at start. At most `max_open` maps are held (least recently
used are dropped), and after every `release_bytes` read the pages touched so
far are handed back to the kernel (MADV_DONTNEED): a file page a process has
touched counts in its resident memory until then, so without this a run that
samples a 50 GB corpus at random would show ~50 GB resident. The pages stay in
the page cache, so reading them again costs a minor fault, not disk I/O.
"""
from __future__ import annotations

import collections
import mmap
import threading

import numpy as np

from data.shards import ShardFile
from gpt.errors import GPTError

PAGE = mmap.PAGESIZE


class TokenReader:
    """Reads windows of tokens from a list of ShardFiles; safe to share between threads."""

    def __init__(self, files: list[ShardFile], max_open: int = 64, release_bytes: int = 64 << 20):
        self.files = files
        self.max_open = max_open
        self.release_bytes = release_bytes
        self._maps: collections.OrderedDict[int, tuple[mmap.mmap, np.ndarray]] = collections.OrderedDict()
        self._touched = 0
        self._lock = threading.Lock()

    @property
    def open_maps(self) -> int:
        return len(self._maps)

    def windows(self, shard: np.ndarray, offset: np.ndarray, length: int) -> np.ndarray:
        """Rows `tokens[shard[i]][offset[i] : offset[i] + length]`, as one (n, length) int64 array."""
        out = np.empty((len(shard), length), dtype=np.int64)
        with self._lock:
            for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist())):
                out[row] = self._tokens(s)[o:o + length]
            self._touched += len(shard) * (length * 4 + PAGE)  # a window spans its bytes plus up to a page more
            if self._touched >= self.release_bytes:
                self._release()
        return out

    def _tokens(self, index: int) -> np.ndarray:
        if index in self._maps:
            self._maps.move_to_end(index)
            return self._maps[index][1]
        info = self.files[index]
        try:
            with open(info.path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            raise GPTError(f"cannot memory-map shard {info.path}: {err}. Check the file is readable "
                           "and was not changed since the dataset was opened.") from None
        tokens = np.frombuffer(mapped, dtype=info.dtype, count=info.tokens, offset=info.offset)
        self._maps[index] = (mapped, tokens)
        if len(self._maps) > self.max_open:
            self._maps.popitem(last=False)  # the map closes once its last window copy is done
        return tokens

    def _release(self) -> None:
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapped, _ in self._maps.values():
                mapped.madvise(mmap.MADV_DONTNEED)
        self._touched = 0
