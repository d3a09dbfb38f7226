"""Training batches that are a pure function of (seed, split, step, micro-step).

The global batch of optimizer step s holds `gradient_accumulation_steps *
batch_size` windows; rank r of W takes micro-batches r*(A/W) ... (r+1)*(A/W)-1
of it. So a run sees the same tokens whatever its world size, and resuming needs
only the position. Windows are random (the default, nanoGPT's) or sequential
(each epoch every non-overlapping window once, in a seeded order): see
data/sampling.py. Shards are mapped lazily and windows copied out one by one
(data/reader.py); a background thread keeps the next micro-batches ready
(data/prefetch.py).
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np
import torch

from data.dataset import Dataset, prepare_command
from data.prefetch import Prefetcher
from data.reader import TokenReader
from data.sampling import RandomWindows, SequentialWindows
from gpt.errors import GPTError

TRAIN_STREAM, EVAL_STREAM = 0, 1
_SPLIT_CODE = {"train": 0, "val": 1}
Batch = tuple[torch.Tensor, torch.Tensor]


class WindowSampler:
    """The windows of block_size + 1 tokens of one split: where they start, and their tokens."""

    def __init__(self, dataset: Dataset, split: str, block_size: int, seed: int, sampling: str = "random"):
        sizes = dataset.sizes[split]
        code = _SPLIT_CODE[split]
        self.random = RandomWindows(sizes, block_size, seed, code)
        self.sequential = SequentialWindows(sizes, block_size, seed, code) if sampling == "sequential" else None
        if (self.sequential or self.random).total == 0:
            raise GPTError(
                f"the {split} split of dataset {dataset.name!r} has {max(sizes)} tokens in its largest shard, "
                f"too few for one window of block_size + 1 = {block_size + 1} tokens. Use a smaller --block_size "
                f"or more text (`{prepare_command(dataset.name, dataset.root.parent)}`).")
        self.reader = TokenReader(dataset.files[split])
        self.block_size = block_size

    @property
    def windows_per_epoch(self) -> Optional[int]:
        """Non-overlapping windows in the split (sequential sampling), else None."""
        return self.sequential.total if self.sequential else None

    def gather(self, shard: np.ndarray, offset: np.ndarray) -> torch.Tensor:
        """The windows' tokens: (count, block_size + 1) int64."""
        return torch.from_numpy(self.reader.windows(shard, offset, self.block_size + 1))


class _RankBatches:
    """Micro-batch k of one rank (k = step * local_micro + micro); what the prefetch thread computes."""

    def __init__(self, train: WindowSampler, batch_size: int, global_micro: int, local_micro: int, rank: int):
        self.train, self.batch_size = train, batch_size
        self.global_micro, self.local_micro, self.rank = global_micro, local_micro, rank

    def at(self, step: int, micro: int) -> Batch:
        index = self.rank * self.local_micro + micro  # this micro-batch's place in the global batch
        rows = self.batch_size
        if self.train.sequential is not None:
            first = (step * self.global_micro + index) * rows
            shard, offset = self.train.sequential.draw(first, rows)
        else:  # draw the whole global batch, so each rank's slice is the same whatever the world size
            shard, offset = self.train.random.draw(TRAIN_STREAM, step, self.global_micro * rows)
            shard, offset = shard[index * rows:(index + 1) * rows], offset[index * rows:(index + 1) * rows]
        windows = self.train.gather(shard, offset)
        return windows[:, :-1], windows[:, 1:]

    def __call__(self, k: int) -> Batch:
        return self.at(k // self.local_micro, k % self.local_micro)


def local_micro_batches(gradient_accumulation_steps: int, world_size: int) -> int:
    """Each rank's share of a step's micro-batches; the global count must split evenly over the ranks."""
    if gradient_accumulation_steps % world_size:
        raise GPTError(f"gradient_accumulation_steps={gradient_accumulation_steps} is the global number of "
                       f"micro-batches per step and must be divisible by the world size {world_size}: "
                       f"use a multiple of {world_size}.")
    return gradient_accumulation_steps // world_size


class BatchLoader:
    """Training micro-batches in order, with a resumable position.

    `next_batch()` returns (x, y) for the current (step, micro-step) of this rank
    and advances; `state_dict()` is that position (the consumer's, never the
    prefetch thread's), enough to resume exactly. `prefetch` micro-batches are
    prepared ahead in a background thread (0 = none).
    """

    def __init__(self, dataset: Dataset, block_size: int, batch_size: int, gradient_accumulation_steps: int,
                 seed: int, rank: int = 0, world_size: int = 1, *, sampling: str = "random", prefetch: int = 4):
        self.train = WindowSampler(dataset, "train", block_size, seed, sampling)
        self.val = WindowSampler(dataset, "val", block_size, seed)
        self.batch_size = batch_size
        self.global_micro = gradient_accumulation_steps
        self.local_micro = local_micro_batches(gradient_accumulation_steps, world_size)
        self.rank = rank
        self.seed = seed
        self.sampling = sampling
        self.prefetch = prefetch
        self.step = 0
        self.micro = 0
        self._batches = _RankBatches(self.train, batch_size, self.global_micro, self.local_micro, rank)
        self._prefetcher: Optional[Prefetcher] = None

    def batch_at(self, step: int, micro: int) -> Batch:
        """The micro-batch `micro` (0-based, of this rank) of optimizer step `step`."""
        return self._batches.at(step, micro)

    def next_batch(self) -> Batch:
        k = self.step * self.local_micro + self.micro
        if self.prefetch <= 0:
            batch = self._batches(k)
        else:
            if self._prefetcher is None or self._prefetcher.next_index != k:
                self._restart_prefetch(k)
            try:
                batch = self._prefetcher.get()
            except BaseException:  # a failed batch (or an interrupt) ends this thread; a retry starts afresh
                self.close()
                raise
        self.micro += 1
        if self.micro == self.local_micro:
            self.step, self.micro = self.step + 1, 0
        return batch

    def eval_batch(self, split: str, index: int) -> Batch:
        """Evaluation batch `index` of a split: the same random windows at every evaluation, in either sampling."""
        sampler = self.train if split == "train" else self.val
        shard, offset = sampler.random.draw(EVAL_STREAM, index, self.batch_size)
        windows = sampler.gather(shard, offset)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "step": self.step, "micro": self.micro, "sampling": self.sampling}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise GPTError(f"the checkpoint's data order was drawn with seed {state['seed']}, this run has "
                           f"--seed={self.seed}: resume with --seed={state['seed']}.")
        saved = state.get("sampling", "random")  # checkpoints from before sequential sampling existed
        if saved != self.sampling:
            raise GPTError(f"the checkpoint's data order used --sampling={saved}, this run has "
                           f"--sampling={self.sampling}: resume with --sampling={saved}.")
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.close()

    def close(self) -> None:
        """Stop the prefetch thread; the next `next_batch()` starts a new one if needed."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def _restart_prefetch(self, k: int) -> None:
        self.close()
        self._prefetcher = Prefetcher(self._batches, k, self.prefetch)
        weakref.finalize(self, self._prefetcher.close)
