"""The one interface the trainer computes through, whatever runs it: one process, DDP or DeepSpeed.

A strategy owns the wrapped model and optimizer. The trainer asks it for a training
step (`train_step`, which draws its own micro-batches, so accumulation and gradient
synchronisation stay the strategy's business) and gets back what happened as a
`StepResult`; it asks for losses on eval batches, for checkpoints to be written and
read, and for numbers to be combined across ranks. It never reaches inside.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from gpt.checkpoint import load_model_state
from gpt.distributed import DistEnv, all_gather_objects, all_reduce_sum
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.runtime import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class StepResult:
    """What one optimizer step did."""

    loss: torch.Tensor  # this rank's mean micro-batch loss, on device (reduce_mean gives the global batch's)
    grad_norm: Optional[torch.Tensor | float]  # of all gradients before clipping; None if the strategy cannot say
    applied: bool  # False when the step was skipped: non-finite gradients, or an fp16 overflow
    data_s: float  # seconds spent waiting for batches
    lr: float  # the learning rate the optimizer used, read back from it
    local_s: float = 0.0  # this rank's work before it first waits for the others (data, forwards): stragglers show here


class MicroBatches:
    """This rank's micro-batches of one step, as (last, x, y); `data_s` sums the time spent waiting for them.

    `local_s` is the time from the first batch until `mark_local()`, which a strategy calls just
    before its first collective of the step (the last micro-batch's backward): the work this rank
    did on its own, which is where a straggler shows (gpt/straggler.py). On a GPU it is timed with
    CUDA events, read once the step has finished, so measuring it never stalls the stream.
    """

    def __init__(self, next_batch: Callable[[], Batch], count: int, device: torch.device):
        self.next_batch, self.count, self.data_s = next_batch, count, 0.0
        self._cuda = device.type == "cuda"
        self._marks: list[Any] = []

    def __iter__(self) -> Iterator[tuple[bool, torch.Tensor, torch.Tensor]]:
        self._marks = [self._now()]
        for micro in range(self.count):
            t0 = time.perf_counter()
            x, y = self.next_batch()
            self.data_s += time.perf_counter() - t0
            yield micro == self.count - 1, x, y

    def mark_local(self) -> None:
        self._marks.append(self._now())

    def _now(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @property
    def local_s(self) -> float:
        """Call after the step's end (its result is on the host): the CUDA events are done by then."""
        if len(self._marks) < 2:
            return 0.0
        start, end = self._marks[0], self._marks[-1]
        return start.elapsed_time(end) / 1e3 if self._cuda else end - start


class Strategy(abc.ABC):
    name = "base"

    def __init__(self, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int, grad_clip: float):
        self.denv = denv
        self.device = device
        self.dtype = dtype
        self.local_accum = local_accum  # this rank's micro-batches per step: the global accumulation / world size
        self.grad_clip = grad_clip

    # -- set-up ----------------------------------------------------------------------------------------
    def build_model(self, make: Callable[[], GPT]) -> GPT:
        """Construct the model the way this strategy holds it: whole on the device here; sharded strategies
        (FSDP, ZeRO-3) build it so that no rank ever holds all of it, with the same initial weights."""
        return make().to(self.device)

    def load_weights(self, model: GPT, weights: dict[str, torch.Tensor], source: str) -> None:
        """Load whole weights (a pretrained snapshot, the same on every rank) into the model `build_model` made;
        sharded strategies keep each rank's part."""
        load_model_state(model, weights, source)

    @abc.abstractmethod
    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        """Take ownership of the model and optimizer (compiling the model if asked)."""

    # -- computing ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def train_step(self, next_batch: Callable[[], Batch], lr: float) -> StepResult:
        """One optimizer step at learning rate `lr` over this rank's `local_accum` micro-batches.

        Gradients are the mean over the global batch, whatever the world size.
        """

    @abc.abstractmethod
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's mean loss on one batch (under the run's precision), for evaluation."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (B, T, vocab) for one batch, under the run's precision: for evaluations that
        score tokens one by one (HellaSwag). Collective under ZeRO-3, like `loss`."""
        with self.autocast():
            return self._module()(self.to_device(x))[0]

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """No gradients and no dropout inside; training mode again after."""
        module = self._module()
        module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            module.train()

    @abc.abstractmethod
    def _module(self) -> torch.nn.Module:
        """The module forward passes go through (wrapped and compiled as the strategy set it up)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU batch on this rank's device; through pinned memory on CUDA, so the copy overlaps compute."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Write model + optimizer + `trainer_state` (collective: every rank calls it), keeping the
        `keep_last` newest checkpoints plus the best one. Refuses NaN/Inf weights, whatever the strategy:
        the previous good checkpoint must stay the one to resume from."""
        if self.any_rank(not all(bool(torch.isfinite(t).all()) for t in self._local_weights())):
            raise GPTError(f"refusing to save a checkpoint: the weights hold NaN/Inf. The previous checkpoint in "
                           f"{out_dir} is intact; resume from it with a lower --learning_rate or a smaller --grad_clip.")
        return self._save(trainer_state, Path(out_dir), keep_last, best)

    @abc.abstractmethod
    def _local_weights(self) -> Iterator[torch.Tensor]:
        """The weight tensors this rank holds (its shards, where the strategy shards them)."""

    @abc.abstractmethod
    def _save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Write the checkpoint in this strategy's storage form (see gpt/checkpoint.py)."""

    @abc.abstractmethod
    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Restore model + optimizer; return the trainer state saved with them (every rank calls it).

        `check(state)` sees the saved trainer state before any weight is loaded, to explain a mismatch.
        """

    # -- numbers across ranks -------------------------------------------------------------------------------------
    def reduce_mean(self, value: torch.Tensor | float) -> float:
        """The mean over ranks of a per-rank number (collective)."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(1).clone()
        return all_reduce_sum(t).item() / self.denv.world_size

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one (collective)."""
        if self.denv.world_size == 1:
            return flag
        return self.reduce_mean(1.0 if flag else 0.0) > 0.0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order (collective)."""
        return all_gather_objects(obj)
