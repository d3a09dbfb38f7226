"""Muon: the orthogonalisation, the AdamW half, stacked matrices, and the split of work across ranks."""
from __future__ import annotations

import pytest
import torch

from gpt.config import ModelConfig, OptimConfig
from gpt.model import GPT
from gpt.muon import Muon, orthogonalize
from gpt.optim import build_optimizer


def spread_matrix(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """A random matrix whose singular values span 0.1 .. 10 (a hundredfold, more than a Gaussian matrix's)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    k = min(m, n)
    s = torch.logspace(-1, 1, k)
    return u[:, :k] @ torch.diag(s) @ v[:, :k].T


@pytest.mark.parametrize("m, n", [(64, 64), (96, 32), (32, 128)])
def test_five_newton_schulz_steps_bring_every_singular_value_near_one(m, n):
    before = torch.linalg.svdvals(spread_matrix(m, n))
    after = torch.linalg.svdvals(orthogonalize(spread_matrix(m, n), steps=5))
    assert before.max() / before.min() > 99
    # the quintic's coefficients trade exactness for speed: values land in ~[0.7, 1.2], not on 1
    assert after.min() > 0.6 and after.max() < 1.25, after
    assert abs(after.mean().item() - 1.0) < 0.15
    # fewer steps leave the smallest singular values far below
    assert torch.linalg.svdvals(orthogonalize(spread_matrix(m, n), steps=2)).min() < 0.1


def test_a_stacked_weight_is_orthogonalised_one_matrix_at_a_time():
    parts = [spread_matrix(32, 32, seed) * (seed + 1) for seed in range(3)]  # q, k, v at different scales
    together = orthogonalize(torch.cat(parts), steps=5, stacked=3)
    for got, part in zip(together.split(32), parts):
        torch.testing.assert_close(got, orthogonalize(part, steps=5))


def model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, **kw))


def test_hidden_matrices_go_to_muon_and_everything_else_to_adamw():
    m = model(mlp="swiglu", tie_embeddings=False, qk_norm=True)
    opt = build_optimizer(m, OptimConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.05), "cpu")
    names = {id(p): n for n, p in m.named_parameters()}
    muon = {names[id(p)]: g["stacked"] for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    adamw = {names[id(p)] for g in opt.param_groups if not g["use_muon"] for p in g["params"]}
    assert muon == {f"transformer.h.{i}.{n}": s for i in range(2) for n, s in
                    [("attn.c_attn.weight", 3), ("attn.c_proj.weight", 1), ("mlp.c_fc.weight", 2), ("mlp.c_proj.weight", 1)]}
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.h.0.attn.qk_norm.weight",
            "transformer.ln_f.weight"} <= adamw
    assert len(muon) + len(adamw) == len(list(m.parameters()))
    assert opt.param_groups[0]["lr_scale"] == 1.0 and not opt.param_groups[0]["use_muon"]
    assert [g["lr_scale"] for g in opt.param_groups if g["use_muon"]] == pytest.approx([50.0, 50.0, 50.0])
    assert "Muon on 8 hidden matrices" in opt.describe()


@pytest.mark.parametrize("impl", ["fused", "foreach", "loop"])
def test_the_adamw_half_steps_exactly_as_torch_adamw(impl):
    a, b = model(), model()
    # Muon's lr 0 keeps the hidden matrices still, so both models see the same gradients for the rest
    cfg = OptimConfig(optimizer="muon", learning_rate=3e-3, weight_decay=0.1, adamw_impl=impl, muon_lr=0.0)
    ours = build_optimizer(a, cfg, "cpu")
    rest = [p for n, p in b.named_parameters() if n not in b.hidden_matrices()]
    theirs = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.1},
                                {"params": [p for p in rest if p.dim() == 1], "weight_decay": 0.0}],
                               lr=3e-3, betas=(0.9, 0.95), fused=impl == "fused", foreach=impl == "foreach")
    x = torch.randint(0, 11, (4, 8))
    for _ in range(3):
        for m, opt in ((a, ours), (b, theirs)):
            m(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    for name, p in a.named_parameters():
        assert torch.equal(p, b.get_parameter(name)), name
    assert not torch.equal(a.transformer.wte.weight, model().transformer.wte.weight)  # it did train


def test_a_muon_step_moves_each_matrix_by_its_orthogonalised_nesterov_momentum():
    w = torch.nn.Parameter(torch.zeros(24, 8))
    opt = Muon([{"params": [w], "use_muon": True, "lr": 0.1, "momentum": 0.9, "ns_steps": 5}])
    grads = [spread_matrix(24, 8, s) for s in range(2)]
    buf = torch.zeros(24, 8)
    expected = torch.zeros(24, 8)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        expected -= 0.1 * 3 ** 0.5 * orthogonalize(0.1 * g + 0.9 * buf, 5)  # tall 24 x 8: scaled by sqrt(24/8)
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(opt.state_dict()["state"][0]["momentum_buffer"], buf)  # the state a checkpoint keeps
