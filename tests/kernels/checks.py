"""Helpers shared by the kernel tests (CPU interpreter and GPU): poisoned buffers, float64 comparison."""
from __future__ import annotations

import pytest
import torch

TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}


def _poisoned(make):
    def poisoned(*args, **kwargs):
        t = make(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        else:
            t.fill_(-7)
        return t
    return poisoned


def poison_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a launcher allocates starts as NaN (or -7), so an element a kernel forgets to write fails."""
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    """Compare a kernel's result with a float64 reference at the tolerance for the kernel's dtype.

    `scale` widens the tolerance for quantities that sum many terms (gradients over long rows).
    """
    rtol, atol = TOLERANCES[dtype]
    assert not torch.isnan(actual).any(), "the kernel left NaN: an unwritten (poisoned) element or a bad mask"
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol * scale, atol=atol * scale)
