"""RMSNorm and RoPE kernels, and the fast recipe with Muon, on a CUDA GPU in bf16 (skipped without CUDA).

Judged as tests/gpu/test_kernels_gpu.py judges the other kernels: against float64, next to
torch's own bf16 result. Run with `make gpu-check`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from gpt.config import KernelConfig, ModelConfig, OptimConfig
from gpt.model import GPT, rope_tables
from gpt.optim import build_optimizer
from kernels.reference import rope_math, rope_torch
from tests.kernels.checks import assert_as_accurate_as

CUDA = torch.device("cuda")




@pytest.mark.parametrize("rows, n", [(8192, 768), (4099, 1000), (98304, 64)])  # the last: QK-norm's head rows
def test_rms_norm_bf16_is_as_accurate_as_torch(poison, rows, n):
    torch.manual_seed(0)
    x = (torch.randn(rows, n, device=CUDA) * 2 + 0.5).bfloat16()
    w = (1 + 0.1 * torch.randn(n, device=CUDA)).bfloat16()
    dy = torch.randn(rows, n, device=CUDA).bfloat16()

    def grads(fn, x, w):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = fn(x, w)
        y.backward(dy.to(y.dtype))
        return [y.detach(), x.grad, w.grad]

    ours = grads(lambda x, w: kernels.rms_norm(x, w, impl="triton"), x, w)
    eager = grads(lambda x, w: F.rms_norm(x, (n,), w, 1e-6), x, w)
    exact = grads(lambda x, w: F.rms_norm(x, (n,), w, 1e-6), x.double(), w.double())
    assert_as_accurate_as(ours, eager, exact, ["y", "dx", "dw"])


def test_rope_bf16_on_the_strided_q_and_k_of_a_projection(poison):
    torch.manual_seed(1)
    B, T, H, D = 8, 1024, 12, 64
    qkv = torch.randn(B, T, 3 * H * D, device=CUDA).bfloat16()
    qk = qkv[..., :2 * H * D].view(B, T, 2 * H, D)
    cos, sin = rope_tables(torch.arange(T, device=CUDA) + 4096, D, 10000.0)  # positions past any block_size
    exact = rope_math(qk.double(), cos, sin)
    ours, eager = kernels.rope(qk, cos, sin, impl="triton"), rope_torch(qk, cos, sin)
    assert_as_accurate_as([ours], [eager], [exact], ["q and k"])


def recipe_losses(ops: str, steps: int = 10) -> list[float]:
    torch.manual_seed(0)
    cfg = ModelConfig(block_size=256, vocab_size=65, n_layer=2, n_head=6, n_embd=384, pos_emb="rope", norm="rmsnorm",
                      qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True, logit_softcap=15.0)
    model = GPT(cfg, kernels=KernelConfig(attention=ops, rmsnorm=ops, rope=ops, cross_entropy=ops)).to(CUDA)
    opt = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=6e-3, muon_lr=0.02), "cuda")
    idx = torch.randint(0, 65, (8, 255), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, torch.roll(idx, -1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()  # Newton-Schulz in bf16 on CUDA
        losses.append(loss.item())
    return losses


def test_the_fast_recipe_trains_with_muon_on_triton_like_the_reference_in_bf16():
    ours = recipe_losses("triton")
    assert ours[-1] < ours[0]
    assert ours == pytest.approx(recipe_losses("torch"), rel=2e-2)
