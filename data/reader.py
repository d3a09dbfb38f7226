"""Copy token windows out of a split's shards through lazy memory maps that leave nothing resident.

A shard is mapped the first time a window is read from it, so a job over 1,000
shards opens none at start. A file page that a process has touched through a
map counts in its resident memory until it is unmapped, and one read maps far
more than the 2 KB window: the pages around it (fault-around) or, on recent
kernels, the whole large page-cache folio, up to 2 MB (measured: ~1.7 MB per
window on Linux 6.18 for a freshly written shard). So after copying a window
out, the reader hands its 2 MB-aligned region back (MADV_DONTNEED): resident
memory stays flat whatever the corpus size. The pages stay in the page cache,
so mapping them again costs a minor fault, not disk I/O.

Once its pages are handed back a map costs address space, not memory, so up to
`max_open` = 1,024 stay open (least recently used dropped beyond that): with 64,
random sampling over 160 shards re-mapped a shard for most windows, which cost
more than the copy.
"""
from __future__ import annotations

import collections
import mmap
import threading

import numpy as np

from data.shards import ShardFile
from gpt.errors import GPTError

RELEASE_ALIGN = 2 << 20  # the largest unit a fault maps on x86-64 and arm64 (a PMD-mapped folio)


class TokenReader:
    """Reads windows of tokens from a list of ShardFiles; safe to share between threads."""

    def __init__(self, files: list[ShardFile], max_open: int = 1024, release: bool = True):
        self.files = files
        self.max_open = max_open
        self.release = release and hasattr(mmap, "MADV_DONTNEED")
        self._maps: collections.OrderedDict[int, tuple[mmap.mmap, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def open_maps(self) -> int:
        return len(self._maps)

    def windows(self, shard: np.ndarray, offset: np.ndarray, length: int) -> np.ndarray:
        """Rows `tokens[shard[i]][offset[i] : offset[i] + length]`, as one (n, length) int64 array."""
        out = np.empty((len(shard), length), dtype=np.int64)
        with self._lock:
            for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist())):
                mapped, tokens = self._open(s)
                out[row] = tokens[o:o + length]
                if self.release:
                    info = self.files[s]
                    first = info.offset + o * info.dtype.itemsize
                    start = first - first % RELEASE_ALIGN
                    end = min(len(mapped), first + length * info.dtype.itemsize + RELEASE_ALIGN - 1)
                    mapped.madvise(mmap.MADV_DONTNEED, start, end - start)
        return out

    def _open(self, index: int) -> tuple[mmap.mmap, np.ndarray]:
        if index in self._maps:
            self._maps.move_to_end(index)
            return self._maps[index]
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
            self._maps.popitem(last=False)  # unmapped when its last array view is collected
        return mapped, tokens
