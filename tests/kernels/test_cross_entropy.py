"""Fused cross-entropy and linear + cross-entropy under the interpreter, against float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from gpt.errors import GPTError
from kernels.cross_entropy import cross_entropy_forward, linear_cross_entropy_forward
from tests.kernels.checks import assert_close64


def reference(logits, targets, ignore_index=-1):
    x = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(x, targets, ignore_index=ignore_index)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("rows, vocab, dtype, block_m, block_v", [
    (13, 100, torch.float32, 4, 32),   # ragged rows and vocabulary blocks: the online logsumexp crosses blocks
    (21, 65, torch.float32, None, None),
    (9, 300, torch.float16, 8, 64),
])
def test_loss_and_gradient_match_float64(poison, rows, vocab, dtype, block_m, block_v):
    torch.manual_seed(0)
    logits = (torch.randn(rows, vocab) * 4).to(dtype)
    targets = torch.randint(0, vocab, (rows,))
    targets[::3] = -1  # ignored rows count neither in the mean nor in the gradient
    losses, grad = cross_entropy_forward(logits, targets, -1, block_m=block_m, block_v=block_v)
    loss, rgrad = reference(logits, targets)
    assert_close64(losses.sum(), loss, torch.float32 if dtype == torch.float32 else dtype)
    assert_close64(grad, rgrad, dtype)
    assert torch.all(grad[::3] == 0)


def test_public_op_scales_the_gradient_by_grad_output():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 33, requires_grad=True)
    targets = torch.randint(0, 33, (2, 5))
    loss = kernels.cross_entropy(logits, targets, impl="triton")
    (3.0 * loss).backward()
    rloss, rgrad = reference(logits.view(10, 33), targets.view(10))
    assert_close64(loss.detach(), rloss, torch.float32)
    assert_close64(logits.grad.view(10, 33), 3.0 * rgrad, torch.float32)


def test_fused_linear_cross_entropy_matches_the_unfused_loss(poison):
    torch.manual_seed(2)
    hidden = torch.randn(23, 16)
    weight = torch.randn(70, 16) * 0.5
    targets = torch.randint(0, 70, (23,))
    targets[5] = -1
    loss, dhidden, dweight = linear_cross_entropy_forward(hidden, weight, targets, -1, chunk=8)  # 3 ragged chunks
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    rloss = F.cross_entropy(h64 @ w64.t(), targets, ignore_index=-1)
    rloss.backward()
    assert_close64(loss, rloss.detach(), torch.float32)
    assert_close64(dhidden, h64.grad, torch.float32)
    assert_close64(dweight, w64.grad, torch.float32)


def test_fused_linear_public_op_has_autograd():
    torch.manual_seed(3)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 6))
    kernels.fused_linear_cross_entropy(hidden, weight, targets, chunk=5, impl="triton").backward()
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    F.cross_entropy((h @ w.t()).view(12, 40), targets.view(12)).backward()
    assert_close64(hidden.grad, h.grad, torch.float32)
    assert_close64(weight.grad, w.grad, torch.float32)


def test_a_second_backward_is_refused_not_silently_wrong():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = kernels.cross_entropy(logits, torch.randint(0, 10, (4,)), impl="triton")
    loss.backward(retain_graph=True)
    with pytest.raises(GPTError, match="backpropagated once"):
        loss.backward()
