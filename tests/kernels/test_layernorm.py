"""Fused LayerNorm under the interpreter: forward and backward against float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.layernorm import layer_norm_backward, layer_norm_forward
from tests.kernels.checks import assert_close64


def reference(x, w, b, dy, eps=1e-5):
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    y = F.layer_norm(x64, (x.size(-1),), w64, b64, eps)
    y.backward(dy.double())
    return y.detach(), x64.grad, w64.grad, None if b is None else b64.grad


@pytest.mark.parametrize("rows, n, bias, dtype, programs, block_m", [
    (37, 48, True, torch.float32, 3, 8),     # ragged row tiles split across three backward programs
    (5, 100, False, torch.float32, None, None),  # no bias, N not a power of two
    (64, 768, True, torch.float32, 2, 16),   # the GPT-2 width
    (19, 96, True, torch.float16, 2, 4),
])
def test_forward_and_backward_match_float64(poison, rows, n, bias, dtype, programs, block_m):
    torch.manual_seed(0)
    x = (torch.randn(rows, n) * 3 + 1).to(dtype)  # a mean and a spread, as a residual stream has
    w = (1 + 0.1 * torch.randn(n)).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype) if bias else None
    dy = torch.randn(rows, n).to(dtype)
    y, mean, rstd = layer_norm_forward(x, w, b, 1e-5, block_m=block_m)
    dx, dw, db = layer_norm_backward(dy, x, w, mean, rstd, programs=programs, block_m=block_m)
    ry, rdx, rdw, rdb = reference(x, w, b, dy)
    assert_close64(y, ry, dtype)
    assert_close64(dx, rdx, dtype, scale=4)
    assert_close64(dw, rdw, dtype, scale=8)
    if bias:
        assert_close64(db, rdb, dtype, scale=8)


def test_public_op_keeps_leading_dims_and_autograd():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 40, requires_grad=True)
    w = torch.randn(40, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    y = kernels.layer_norm(x, w, b, impl="triton")
    assert y.shape == x.shape
    (y * torch.arange(40.0)).sum().backward()
    ry, rdx, rdw, rdb = reference(x.detach(), w.detach(), b.detach(), torch.arange(40.0).expand(2, 3, 40))
    assert_close64(y.detach(), ry, torch.float32)
    for got, want in ((x.grad, rdx), (w.grad, rdw), (b.grad, rdb)):
        assert_close64(got, want, torch.float32, scale=8)
