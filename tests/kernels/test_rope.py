"""RoPE under the interpreter: the rotation and its backward against float64, any positions, the public op."""
from __future__ import annotations

import pytest
import torch

import kernels
from gpt.errors import GPTError
from gpt.model import rope_tables
from kernels.rope import rope_forward
from tests.kernels.checks import assert_close64


def reference(x, cos, sin, dy):
    """Rotate-half in float64, written independently of kernels/reference.py: pair (i, i + D/2) turns by its angle."""
    x64 = x.double().requires_grad_()
    half = x.size(-1) // 2
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]
    x1, x2 = x64[..., :half], x64[..., half:]
    y = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    y.backward(dy.double())
    return y.detach(), x64.grad


@pytest.mark.parametrize("shape, start, dtype, block_r", [
    ((2, 9, 3, 16), 0, torch.float32, 16),      # ragged row tiles
    ((1, 5, 2, 24), 5000, torch.float32, None),  # positions far past any block_size; D/2 = 12 not a power of two
    ((2, 7, 2, 32), 3, torch.float16, 8),
])
def test_forward_and_backward_match_float64(poison, shape, start, dtype, block_r):
    torch.manual_seed(0)
    B, T, H, D = shape
    x, dy = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    cos, sin = rope_tables(torch.arange(start, start + T), D, 10000.0)
    ry, rdx = reference(x, cos, sin, dy)
    assert_close64(rope_forward(x, cos, sin, block_r=block_r), ry, dtype)
    assert_close64(rope_forward(dy, cos, sin, inverse=True, block_r=block_r), rdx, dtype)


def test_public_op_takes_the_strided_q_of_a_projection_and_backpropagates():
    torch.manual_seed(1)
    qkv = torch.randn(2, 6, 3 * 32, requires_grad=True)
    q = qkv[..., :32].view(2, 6, 4, 8)  # (B, T, H, D) straight from c_attn: rows 96 apart
    cos, sin = rope_tables(torch.arange(6), 8, 10000.0)
    y = kernels.rope(q, cos, sin, impl="triton")
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    ry, rdx = reference(q.detach(), cos, sin, dy)
    assert_close64(y.detach(), ry, torch.float32)
    assert_close64(qkv.grad[..., :32].reshape(2, 6, 4, 8), rdx, torch.float32)
    assert torch.count_nonzero(qkv.grad[..., 32:]) == 0


@pytest.mark.parametrize("impl", ["torch", "math", "triton"])
def test_scores_depend_only_on_the_distance_between_positions(impl):
    """q at p, k at s: the rotated q.k is the same for (p, s) and (p + 4000, s + 4000)."""
    torch.manual_seed(2)
    q, k = torch.randn(1, 1, 2, 16, dtype=torch.float32), torch.randn(1, 1, 2, 16, dtype=torch.float32)

    def score(p: int, s: int) -> torch.Tensor:
        qp = kernels.rope(q, *rope_tables(torch.tensor([p]), 16, 10000.0), impl=impl)
        ks = kernels.rope(k, *rope_tables(torch.tensor([s]), 16, 10000.0), impl=impl)
        return (qp * ks).sum(-1)

    torch.testing.assert_close(score(17, 10), score(4017, 4010), rtol=2e-3, atol=2e-3)
    assert not torch.allclose(score(17, 10), score(17, 11), rtol=1e-3, atol=1e-3)


def test_the_op_compiles_as_one_graph():
    torch.manual_seed(3)
    x = torch.randn(1, 5, 2, 8, requires_grad=True)
    cos, sin = rope_tables(torch.arange(5), 8, 10000.0)

    def f(x):
        return (kernels.rope(x, cos, sin, impl="triton") * torch.arange(8.0)).sum()

    eager = f(x)
    (grad,) = torch.autograd.grad(eager, x)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, x)[0], grad)


def test_tables_that_do_not_fit_are_explained():
    x = torch.randn(1, 4, 2, 8)
    cos, sin = rope_tables(torch.arange(3), 8, 10000.0)
    with pytest.raises(GPTError, match=r"one row per position"):
        kernels.rope(x, cos, sin, impl="triton")


def test_auto_runs_torchs_op_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not launch a kernel on CPU")
    monkeypatch.setattr(kernels._rope, "rope_triton", fail)
    kernels.rope(torch.randn(1, 4, 2, 8), *rope_tables(torch.arange(4), 8, 10000.0))


def test_a_recipe_gpt_on_our_kernels_trains_like_the_reference():
    from gpt.config import KernelConfig, ModelConfig
    from gpt.model import GPT

    def losses(impl: str) -> list[float]:
        torch.manual_seed(0)
        cfg = ModelConfig(block_size=16, vocab_size=37, n_layer=1, n_head=2, n_embd=32, pos_emb="rope", norm="rmsnorm",
                          qk_norm=True, mlp="relu2", tie_embeddings=False)
        model = GPT(cfg, kernels=KernelConfig(attention="torch", rmsnorm=impl, rope=impl))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        idx = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(1))
        out = []
        for _ in range(3):
            _, loss = model(idx, torch.roll(idx, -1, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    ours = losses("triton")
    assert ours[-1] < ours[0]
    assert ours == pytest.approx(losses("torch"), rel=1e-4, abs=1e-5)
