"""Where the windows of a batch start: a pure function of (seed, split, position).

Two orders over the windows of block_size + 1 tokens of a split:
- random (nanoGPT's): every window start is drawn uniformly, independently, from
  a generator seeded by (seed, split, stream, step);
- sequential: the split is cut into non-overlapping windows (stride block_size,
  neighbours share one boundary token, which is input of one and target of the
  other), and each epoch visits all of them once in a seeded pseudo-random order.

The sequential order is a Feistel permutation with cycle walking, computed per
window position, so it costs O(1) memory whatever the corpus size (a shuffled
index array of a 100 B-token corpus would be ~800 MB).
"""
from __future__ import annotations

import threading

import numpy as np


SAMPLING = ("random", "sequential")
SEQUENTIAL_STREAM = 2
_ROUNDS = 4
CHUNK = 1 << 13  # window positions permuted at once: numpy's per-call cost is paid per chunk, not per batch
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap 64-bit hash (uint64 arithmetic wraps)."""
    x = (x ^ (x >> 30)) * _M1
    x = (x ^ (x >> 27)) * _M2
    return x ^ (x >> 31)


def permute(index: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, n) keyed by `keys`, applied to `index` (values in [0, n)).

    A balanced Feistel network permutes [0, 4^h) for the smallest 4^h >= n;
    values that land outside [0, n) are permuted again (cycle walking), which
    keeps the result a bijection of [0, n). Each pass lands inside with
    probability > 1/4, so a few passes suffice.
    """
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)

    def once(v: np.ndarray) -> np.ndarray:
        left, right = v >> shift, v & mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        return (left << shift) | right

    out = once(index.astype(np.uint64))
    outside = out >= n
    while outside.any():
        out[outside] = once(out[outside])
        outside = out >= n
    return out.astype(np.int64)


class RandomWindows:
    """Window starts drawn uniformly over every shard of a split (nanoGPT's sampling)."""

    def __init__(self, sizes: list[int], block_size: int, seed: int, split_code: int):
        windows = np.maximum(np.array(sizes, dtype=np.int64) - block_size, 0)
        self.total = int(windows.sum())
        self.cum = np.cumsum(windows)
        self.seed, self.split_code = seed, split_code
        self._last: tuple[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def draw(self, stream: int, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, token offset) of the `count` windows of (stream, step)."""
        last = self._last  # the micro-steps of one step all slice the same draw: make it once
        if last is not None and last[0] == (stream, step, count):
            return last[1]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.split_code, stream, step])))
        flat = rng.integers(0, self.total, size=count)
        shard = np.searchsorted(self.cum, flat, side="right")
        before = np.concatenate(([0], self.cum[:-1]))[shard]
        self._last = ((stream, step, count), (shard, flat - before))
        return shard, flat - before


class SequentialWindows:
    """Non-overlapping windows, each epoch a seeded permutation of all of them."""

    def __init__(self, sizes: list[int], block_size: int, seed: int, split_code: int):
        windows = np.maximum(np.array(sizes, dtype=np.int64) - 1, 0) // block_size
        self.total = int(windows.sum())
        self.cum = np.cumsum(windows)
        self.block_size = block_size
        self.seed, self.split_code = seed, split_code
        self._keys: dict[int, np.ndarray] = {}
        self._chunks: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # the prefetch thread and a direct batch_at() may ask at once

    def epoch_keys(self, epoch: int) -> np.ndarray:
        if epoch not in self._keys:
            if len(self._keys) > 4:
                self._keys.clear()
            seq = np.random.SeedSequence([self.seed, self.split_code, SEQUENTIAL_STREAM, epoch])
            self._keys[epoch] = seq.generate_state(_ROUNDS, dtype=np.uint64)
        return self._keys[epoch]

    def window_ids(self, first: int, count: int) -> np.ndarray:
        """Ids in [0, total) of the windows at positions first ... first+count-1 of the endless epoch sequence."""
        with self._lock:
            c0, c1 = first // CHUNK, (first + count - 1) // CHUNK
            parts = [self._chunk(c) for c in range(c0, c1 + 1)]
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return ids[first - c0 * CHUNK:first - c0 * CHUNK + count]

    def _chunk(self, c: int) -> np.ndarray:
        if c not in self._chunks:
            if len(self._chunks) >= 4:
                self._chunks.pop(next(iter(self._chunks)))
            pos = np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.int64)
            epoch, index = pos // self.total, pos % self.total
            ids = np.empty(CHUNK, dtype=np.int64)
            for e in np.unique(epoch).tolist():
                here = epoch == e
                ids[here] = permute(index[here], self.total, self.epoch_keys(e))
            self._chunks[c] = ids
        return self._chunks[c]

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, token offset) of window ids."""
        shard = np.searchsorted(self.cum, ids, side="right")
        before = np.concatenate(([0], self.cum[:-1]))[shard]
        return shard, (ids - before) * self.block_size

    def draw(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self.locate(self.window_ids(first, count))

