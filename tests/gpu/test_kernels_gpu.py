"""Our Triton kernels on a CUDA GPU, in bf16 at the sizes the GPT uses (skipped without CUDA).

bf16 results are judged against float64 next to torch's own bf16 result: our error
may be at most twice torch's plus bf16's rounding of the largest value, so the tolerance
follows the dtype and scales with the values (tests/kernels/test_checks.py shows on CPU
that a zero or a 10%-off result fails it). Run with `make gpu-check`.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from gpt.config import ModelConfig
from gpt.model import GPT
from kernels.flash_attention import (
    attention_backward,
    attention_forward,
    dropout_keep_mask,
)
from kernels.reference import attention_math
from tests.kernels.checks import assert_as_accurate_as, assert_close_relative

CUDA = torch.device("cuda")


def assert_as_good_as_torch(ours: list[torch.Tensor], torchs: list[torch.Tensor], exact: list[torch.Tensor]) -> None:
    assert_as_accurate_as(ours, torchs, exact, ["out", "grad 1", "grad 2", "grad 3"])


def attention_grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    o.backward(do)
    return [o.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("shape", [(8, 12, 1024, 64), (2, 4, 1000, 24), (2, 4, 777, 48), (1, 8, 1024, 128)])
def test_flash_attention_bf16_is_as_accurate_as_sdpa(poison, shape):
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(shape, device=CUDA, dtype=torch.bfloat16) for _ in range(4))
    ours = attention_grads(lambda *a: kernels.attention(*a, impl="triton"), q, k, v, do)
    sdpa = attention_grads(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True), q, k, v, do)
    exact = attention_grads(lambda *a: attention_math(*a), q.double(), k.double(), v.double(), do.double())
    assert_as_good_as_torch(ours, sdpa, exact)


@pytest.mark.parametrize("dtype, causal", [(torch.float32, True), (torch.float16, False)])
def test_flash_attention_fp32_fp16_match_float64(poison, dtype, causal):
    torch.manual_seed(1)
    shape = (2, 3, 300, 40)
    q, k, v, do = (torch.randn(shape, device=CUDA, dtype=dtype) for _ in range(4))
    scale = 1 / math.sqrt(40)
    o, lse = attention_forward(q, k, v, 0, causal, 0.0, scale)
    grads = attention_backward(do, q, k, v, o, lse, 0, causal, 0.0, scale)
    exact = attention_grads(lambda *a: attention_math(*a, causal=causal), q.double(), k.double(), v.double(),
                            do.double())
    for got, want in zip([o, *grads], exact):
        assert_close_relative(got, want, rel=1e-4 if dtype == torch.float32 else 1e-2)


def test_flash_attention_dropout_mask_matches_in_forward_and_backward(poison):
    torch.manual_seed(2)
    shape, p, seed = (2, 4, 515, 64), 0.2, 99
    q, k, v, do = (torch.randn(shape, device=CUDA, dtype=torch.float16) for _ in range(4))
    scale = 1 / 8
    o, lse = attention_forward(q, k, v, seed, True, p, scale)
    grads = attention_backward(do, q, k, v, o, lse, seed, True, p, scale)
    keep = dropout_keep_mask(seed, 8, 515, p, CUDA).view(2, 4, 515, 515)
    assert abs(keep.float().mean().item() - 0.8) < 0.005
    exact = attention_grads(lambda *a: attention_math(*a, dropout_p=p, keep=keep), q.double(), k.double(),
                            v.double(), do.double())
    for got, want in zip([o, *grads], exact):
        assert_close_relative(got, want, rel=1e-2)


@pytest.mark.parametrize("rows, n", [(8192, 768), (4099, 1000)])
def test_layer_norm_bf16_is_as_accurate_as_torch(poison, rows, n):
    torch.manual_seed(3)
    x = (torch.randn(rows, n, device=CUDA) * 2 + 0.5).bfloat16()
    w, b = (1 + 0.1 * torch.randn(n, device=CUDA)).bfloat16(), (0.1 * torch.randn(n, device=CUDA)).bfloat16()
    dy = torch.randn(rows, n, device=CUDA).bfloat16()

    def grads(fn, x, w, b):
        x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
        y = fn(x, w, b)
        y.backward(dy.to(y.dtype))
        return [y.detach(), x.grad, w.grad, b.grad]

    ours = grads(lambda *a: kernels.layer_norm(*a, impl="triton"), x, w, b)
    eager = grads(lambda x, w, b: F.layer_norm(x, (n,), w, b), x, w, b)
    exact = grads(lambda x, w, b: F.layer_norm(x, (n,), w, b), x.double(), w.double(), b.double())
    assert_as_good_as_torch(ours, eager, exact)


def test_cross_entropy_bf16_at_gpt2_vocab(poison):
    torch.manual_seed(4)
    logits = (torch.randn(4096, 50304, device=CUDA) * 3).bfloat16()
    targets = torch.randint(0, 50304, (4096,), device=CUDA)
    targets[::7] = -1

    def grads(fn, x):
        x = x.detach().requires_grad_()
        loss = fn(x)
        loss.backward()
        return [loss.detach(), x.grad]

    ours = grads(lambda x: kernels.cross_entropy(x, targets, impl="triton"), logits)
    eager = grads(lambda x: F.cross_entropy(x, targets, ignore_index=-1), logits)
    exact = grads(lambda x: F.cross_entropy(x, targets, ignore_index=-1), logits.double())
    assert_as_good_as_torch(ours, eager, exact)


def test_fused_linear_cross_entropy_bf16(poison):
    torch.manual_seed(5)
    hidden = torch.randn(3000, 768, device=CUDA).bfloat16()
    weight = (torch.randn(50304, 768, device=CUDA) * 0.02).bfloat16()
    targets = torch.randint(0, 50304, (3000,), device=CUDA)

    def grads(fn, h, w):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss = fn(h, w)
        loss.backward()
        return [loss.detach(), h.grad, w.grad]

    ours = grads(lambda h, w: kernels.fused_linear_cross_entropy(h, w, targets, impl="triton"), hidden, weight)
    eager = grads(lambda h, w: F.cross_entropy(h @ w.t(), targets), hidden, weight)
    exact = grads(lambda h, w: F.cross_entropy(h @ w.t(), targets), hidden.double(), weight.double())
    assert_as_good_as_torch(ours, eager, exact)


def gpt_losses(steps: int, compile: bool = False, **ops) -> list[float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=256, vocab_size=65, n_layer=2, n_head=6, n_embd=384, dropout=0.0,
                            **ops)).to(CUDA)
    run = torch.compile(model, fullgraph=True) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 65, (8, 255), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = run(idx, torch.roll(idx, -1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_gpt_on_triton_trains_like_the_reference_in_bf16():
    ours = gpt_losses(10, attention="triton", layernorm="triton", cross_entropy="triton")
    ref = gpt_losses(10, attention="torch", layernorm="torch", cross_entropy="torch")
    assert ours[-1] < ours[0]
    assert ours == pytest.approx(ref, rel=2e-2)


def test_gpt_on_triton_compiles_in_one_graph_with_inductor():
    ours = gpt_losses(3, compile=True, attention="triton", layernorm="triton", cross_entropy="triton",
                      fused_linear_loss=True)
    assert ours == pytest.approx(gpt_losses(3, attention="torch", layernorm="torch", cross_entropy="torch"), rel=2e-2)
