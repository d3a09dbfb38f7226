"""Flash attention under the interpreter: forward and backward against float64, masks, dropout."""
from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.flash_attention import attention_backward, attention_forward, dropout_keep_mask
from kernels.reference import attention_math
from tests.kernels.checks import assert_close64

SMALL_TILES = dict(block_m=32, block_n=16, block_big=32, block_small=16, warps=4, stages=1)


def reference_grads(q, k, v, do, causal, scale, keep=None, p=0.0):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o = attention_math(q64, k64, v64, causal=causal, dropout_p=p, scale=scale, keep=keep)
    o.backward(do.double())
    return o.detach(), q64.grad, k64.grad, v64.grad


@pytest.mark.parametrize("shape, causal, tiles, dtype", [
    ((1, 2, 37, 24), True, SMALL_TILES, torch.float32),    # odd T over several tiles, D=24 padded to 32
    ((1, 1, 45, 48), False, SMALL_TILES, torch.float32),   # full attention with a ragged last tile, D=48
    ((2, 1, 17, 16), True, None, torch.float32),           # T below one tile: every row is a masked tail
    ((1, 1, 9, 128), True, None, torch.float32),           # the widest head
    ((1, 2, 33, 64), True, SMALL_TILES, torch.float16),
])
def test_forward_and_backward_match_float64(poison, shape, causal, tiles, dtype):
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(shape).to(dtype) for _ in range(4))
    scale = 1.0 / math.sqrt(shape[-1])
    o, lse = attention_forward(q, k, v, 0, causal, 0.0, scale, tiles)
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, 0, causal, 0.0, scale, tiles)
    ro, rdq, rdk, rdv = reference_grads(q, k, v, do, causal, scale)
    assert_close64(o, ro, dtype)
    assert_close64(dq, rdq, dtype, scale=4)
    assert_close64(dk, rdk, dtype, scale=4)
    assert_close64(dv, rdv, dtype, scale=4)
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(shape[2], shape[2], dtype=torch.bool).triu(1), float("-inf"))
    assert_close64(lse, torch.logsumexp(s, -1), dtype)


def test_public_op_takes_strided_inputs_and_a_custom_scale():
    torch.manual_seed(1)
    B, T, H, D = 1, 21, 2, 16
    qkv = torch.randn(B, T, 3 * H * D)  # as the model makes them: views of one projection, not contiguous
    q, k, v = (t.view(B, T, H, D).transpose(1, 2).requires_grad_() for t in qkv.split(H * D, dim=2))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = kernels.attention(q, k, v, scale=0.3, impl="triton")
    out.sum().backward()
    ro, rdq, rdk, rdv = reference_grads(q, k, v, torch.ones_like(out), True, 0.3)
    assert_close64(out, ro, torch.float32)
    for got, want in ((q.grad, rdq), (k.grad, rdk), (v.grad, rdv)):
        assert_close64(got, want, torch.float32, scale=4)


def test_dropout_mask_is_the_same_in_forward_and_backward(poison):
    torch.manual_seed(2)
    shape, p, seed = (1, 2, 40, 16), 0.3, 1234
    q, k, v, do = (torch.randn(shape) for _ in range(4))
    scale = 1.0 / math.sqrt(shape[-1])
    o, lse = attention_forward(q, k, v, seed, True, p, scale, SMALL_TILES)
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, seed, True, p, scale, SMALL_TILES)
    keep = dropout_keep_mask(seed, 2, 40, p, "cpu").view(1, 2, 40, 40)
    ro, rdq, rdk, rdv = reference_grads(q, k, v, do, True, scale, keep=keep, p=p)
    assert_close64(o, ro, torch.float32)
    for got, want in ((dq, rdq), (dk, rdk), (dv, rdv)):
        assert_close64(got, want, torch.float32, scale=4)
    o_again, _ = attention_forward(q, k, v, seed, True, p, scale, None)  # other tiles, same seed: same mask
    assert_close64(o_again, ro, torch.float32)
    o_other, _ = attention_forward(q, k, v, seed + 1, True, p, scale, SMALL_TILES)
    assert not torch.allclose(o_other, o)


def test_dropout_keep_rate_is_one_minus_p():
    keep = dropout_keep_mask(7, 4, 128, 0.2, "cpu")
    assert abs(keep.float().mean().item() - 0.8) < 0.01  # 65536 draws: 6 standard deviations
    heads = keep.view(4, -1).float().mean(1)
    assert not torch.equal(keep[0], keep[1]) and (heads - 0.8).abs().max() < 0.02


def test_dropout_follows_torch_manual_seed():
    q, k, v = (torch.randn(1, 1, 12, 16) for _ in range(3))
    torch.manual_seed(5)
    a = kernels.attention(q, k, v, dropout_p=0.5, impl="triton")
    torch.manual_seed(5)
    b = kernels.attention(q, k, v, dropout_p=0.5, impl="triton")
    c = kernels.attention(q, k, v, dropout_p=0.5, impl="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)
