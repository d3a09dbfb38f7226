"""What every test under tests/gpu shares: the GPU-only marks and the poisoned allocator."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kernels
from tests.kernels.checks import poison_allocations

HERE = Path(__file__).parent
NO_GPU = not torch.cuda.is_available() or kernels.INTERPRETER or not kernels.TRITON


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # marked and skipped without a GPU, never left out: `make gpu-check` runs them where there is one
    skip = pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU, triton, and TRITON_INTERPRET unset")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            item.add_marker(skip)


@pytest.fixture
def poison(monkeypatch):
    """New CUDA tensors start as NaN, so an element a kernel never writes fails the comparison."""
    poison_allocations(monkeypatch)
