"""Fused RMSNorm under the interpreter: forward and backward against float64, the public op, compile."""
from __future__ import annotations

import pytest
import torch

import kernels
from gpt.errors import GPTError
from kernels.rmsnorm import rms_norm_backward, rms_norm_forward
from tests.kernels.checks import assert_close64


def reference(x, w, dy, eps=1e-6):
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64
    y.backward(dy.double())
    return y.detach(), x64.grad, w64.grad


@pytest.mark.parametrize("rows, n, dtype, programs, block_m", [
    (37, 48, torch.float32, 3, 8),      # ragged row tiles split across three backward programs
    (5, 100, torch.float32, None, None),  # N not a power of two
    (64, 768, torch.float32, 2, 16),    # the GPT-2 width
    (19, 32, torch.float16, 2, 4),      # a head's width, as QK-norm uses it
])
def test_forward_and_backward_match_float64(poison, rows, n, dtype, programs, block_m):
    torch.manual_seed(0)
    x = (torch.randn(rows, n) * 3 + 1).to(dtype)
    w = (1 + 0.1 * torch.randn(n)).to(dtype)
    dy = torch.randn(rows, n).to(dtype)
    y, rstd = rms_norm_forward(x, w, 1e-6, block_m=block_m)
    dx, dw = rms_norm_backward(dy, x, w, rstd, programs=programs, block_m=block_m)
    ry, rdx, rdw = reference(x, w, dy)
    assert_close64(y, ry, dtype)
    assert_close64(dx, rdx, dtype, scale=4)
    assert_close64(dw, rdw, dtype, scale=8)


def test_public_op_keeps_leading_dims_strides_and_autograd():
    torch.manual_seed(1)
    base = torch.randn(2, 5, 3, 40)
    x = base[:, :, 1].detach().requires_grad_()  # (2, 5, 40), rows 120 apart in memory: not contiguous
    w = torch.randn(40, requires_grad=True)
    y = kernels.rms_norm(x, w, impl="triton")
    assert y.shape == x.shape
    dy = torch.arange(40.0).expand(2, 5, 40)
    (y * dy).sum().backward()
    ry, rdx, rdw = reference(x.detach(), w.detach(), dy)
    assert_close64(y.detach(), ry, torch.float32)
    assert_close64(x.grad, rdx, torch.float32, scale=8)
    assert_close64(w.grad, rdw, torch.float32, scale=8)


@pytest.mark.parametrize("impl", ["torch", "math"])
def test_torch_and_math_give_the_float64_result(impl):
    torch.manual_seed(2)
    x, w = torch.randn(6, 24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-6, impl=impl), reference(x, w, torch.ones_like(x))[0])


def test_the_op_compiles_as_one_graph():
    torch.manual_seed(3)
    x, w = torch.randn(5, 24, requires_grad=True), torch.randn(24, requires_grad=True)

    def f(x, w):
        return (kernels.rms_norm(x, w, impl="triton") * torch.arange(24.0)).sum()

    eager = f(x, w)
    grads = torch.autograd.grad(eager, (x, w))
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled, (x, w)), grads):
        torch.testing.assert_close(got, want)


def test_a_weight_of_the_wrong_size_is_explained():
    with pytest.raises(GPTError, match=r"weight must have shape \(8,\)"):
        kernels.rms_norm(torch.randn(2, 8), torch.ones(7), impl="triton")


def test_auto_runs_torchs_op_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not launch a kernel on CPU")
    monkeypatch.setattr(kernels._rms, "rms_norm_triton", fail)
    kernels.rms_norm(torch.randn(3, 8), torch.ones(8))
