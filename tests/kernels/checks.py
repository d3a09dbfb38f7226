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


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(actual).any(), "the kernel left NaN: an unwritten (poisoned) element or a bad mask"
    return (actual.double().cpu() - expected.double().cpu()).abs().max().item()


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """The largest error is at most `rel` times the largest expected value: a tolerance that scales with the
    values, so a zero or wrongly scaled result fails whatever their size (an absolute one passes small ones)."""
    scale = expected.double().abs().max().item()
    err = max_error(actual, expected)
    assert scale > 0 and err <= rel * scale, f"largest error {err:.3g} against largest value {scale:.3g} (rel {rel:g})"


def assert_as_accurate_as(ours: list[torch.Tensor], theirs: list[torch.Tensor], exact: list[torch.Tensor],
                          names: list[str], slack: float = 2.0, floor: float = 4e-3) -> None:
    """Each of our results is at most `slack` times as far from the float64 `exact` one as torch's result in
    the same dtype, plus `floor` (bf16's rounding, 2^-8) times the largest exact value."""
    for name, o, t, e in zip(names, ours, theirs, exact):
        scale = e.double().abs().max().item()
        ours_err, torch_err = max_error(o, e), max_error(t, e)
        assert scale > 0 and ours_err <= slack * torch_err + floor * scale, (
            f"{name}: our error {ours_err:.3g} vs torch's {torch_err:.3g}, largest value {scale:.3g}")
