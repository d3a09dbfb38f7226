"""Random-window batches that are a pure function of (seed, split, step, micro-step).

The global batch of optimizer step s holds `gradient_accumulation_steps *
batch_size` windows drawn from a generator seeded by (seed, stream, s); rank r of
W takes micro-batches r*(A/W) ... (r+1)*(A/W)-1 of it. So a run sees the same
tokens whatever its world size, and resuming needs only the step counter.
Shards are memory-mapped on first use and windows copied out one by one: a split
is never read whole into RAM.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data.dataset import Dataset, prepare_command
from data.shards import open_shard
from gpt.errors import GPTError

TRAIN_STREAM, EVAL_STREAM = 0, 1
_SPLIT_CODE = {"train": 0, "val": 1}


class WindowSampler:
    """Draws windows of block_size + 1 tokens uniformly over every shard of a split."""

    def __init__(self, dataset: Dataset, split: str, block_size: int, seed: int):
        self.paths = dataset.shards[split]
        sizes = np.array(dataset.sizes[split], dtype=np.int64)
        windows = np.maximum(sizes - block_size, 0)
        if windows.sum() == 0:
            raise GPTError(
                f"the {split} split of dataset {dataset.name!r} has {int(sizes.max())} tokens in its largest shard, "
                f"too few for one window of block_size + 1 = {block_size + 1} tokens. Use a smaller --block_size "
                f"or more text (`{prepare_command(dataset.name, dataset.root.parent)}`).")
        self.cum_windows = np.cumsum(windows)
        self.block_size = block_size
        self.split_code = _SPLIT_CODE[split]
        self.seed = seed
        self._maps: dict[int, np.memmap] = {}

    def starts(self, stream: int, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, offset) of the `count` windows of (stream, step)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.split_code, stream, step])))
        flat = rng.integers(0, int(self.cum_windows[-1]), size=count)
        shard = np.searchsorted(self.cum_windows, flat, side="right")
        before = np.concatenate(([0], self.cum_windows[:-1]))[shard]
        return shard, flat - before

    def gather(self, shard: np.ndarray, offset: np.ndarray) -> torch.Tensor:
        """Copy the windows out of their memory maps: (count, block_size + 1) int64."""
        out = np.empty((len(shard), self.block_size + 1), dtype=np.int64)
        for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist())):
            out[row] = self._map(s)[o:o + self.block_size + 1]
        return torch.from_numpy(out)

    def _map(self, index: int) -> np.memmap:
        if index not in self._maps:
            self._maps[index] = open_shard(self.paths[index])
        return self._maps[index]


class BatchLoader:
    """Training micro-batches in order, with a resumable position.

    `next_batch()` returns (x, y) for the current (step, micro-step) of this rank
    and advances; `state_dict()` is that position, enough to resume exactly.
    """

    def __init__(self, dataset: Dataset, block_size: int, batch_size: int, gradient_accumulation_steps: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        if gradient_accumulation_steps % world_size:
            raise GPTError(f"gradient_accumulation_steps={gradient_accumulation_steps} is the global number of "
                           f"micro-batches per step and must be divisible by the world size {world_size}.")
        self.train = WindowSampler(dataset, "train", block_size, seed)
        self.val = WindowSampler(dataset, "val", block_size, seed)
        self.batch_size = batch_size
        self.global_micro = gradient_accumulation_steps
        self.local_micro = gradient_accumulation_steps // world_size
        self.rank = rank
        self.seed = seed
        self.step = 0
        self.micro = 0

    def batch_at(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch `micro` (0-based, of this rank) of optimizer step `step`."""
        index = self.rank * self.local_micro + micro
        shard, offset = self.train.starts(TRAIN_STREAM, step, self.global_micro * self.batch_size)
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        windows = self.train.gather(shard[rows], offset[rows])
        return windows[:, :-1], windows[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.step, self.micro)
        self.micro += 1
        if self.micro == self.local_micro:
            self.step, self.micro = self.step + 1, 0
        return batch

    def eval_batch(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation batch `index` of a split: the same windows at every evaluation."""
        sampler = self.train if split == "train" else self.val
        shard, offset = sampler.starts(EVAL_STREAM, index, self.batch_size)
        windows = sampler.gather(shard, offset)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "step": self.step, "micro": self.micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise GPTError(f"the checkpoint's data order was drawn with seed {state['seed']}, this run has "
                           f"--seed={self.seed}: resume with --seed={state['seed']}.")
        self.step, self.micro = int(state["step"]), int(state["micro"])
