"""The optimizer groups and the learning-rate schedule users configure with nanoGPT's keys."""
import pytest

from gpt.config import ModelConfig, OptimConfig
from gpt.model import GPT
from gpt.optim import build_optimizer, lr_at


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    assert lr_at(0, cfg) < lr_at(50, cfg) < lr_at(99, cfg) <= 1e-3
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(1050, cfg) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert lr_at(2000, cfg) == pytest.approx(1e-4)
    assert lr_at(5000, cfg) == pytest.approx(1e-4)
    assert lr_at(1234, OptimConfig(learning_rate=3e-4, decay_lr=False)) == 3e-4


def test_only_matrices_get_weight_decay():
    model = GPT(ModelConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8, bias=True))
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
