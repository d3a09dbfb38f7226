"""DistributedDataParallel: every rank holds the whole model; gradients are averaged on the last micro-step."""
from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from gpt.strategy.single import SingleStrategy


class DDPStrategy(SingleStrategy):
    """Same steps and checkpoints as SingleStrategy (rank 0 writes, every rank reads); DDP syncs the gradients."""

    name = "ddp"

    def _wrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def _sync_gradients(self, last: bool) -> contextlib.AbstractContextManager:
        # all-reduce only once per optimizer step, when the last micro-batch's gradients are in
        return contextlib.nullcontext() if last else self.model.no_sync()
