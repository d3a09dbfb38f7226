"""The optimizer groups and the learning-rate schedule users configure with nanoGPT's keys."""
import math

import pytest

from gpt.config import ModelConfig, OptimConfig
from gpt.model import GPT
from gpt.optim import build_optimizer, lr_at

SCHEDULE = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2100)


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    # nanoGPT's formulas written out: warmup (it+1)/(warmup+1), then min + (1+cos(pi*ratio))/2 * (max-min)
    cosine = lambda ratio: 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * 9e-4  # noqa: E731
    expected = {0: 1e-3 / 101, 49: 1e-3 * 50 / 101, 99: 1e-3 * 100 / 101, 100: 1e-3,
                600: cosine(0.25), 1100: cosine(0.5), 1600: cosine(0.75), 2100: 1e-4, 5000: 1e-4}
    assert {it: lr_at(it, SCHEDULE) for it in expected} == pytest.approx(expected, rel=1e-12)
    assert lr_at(600, SCHEDULE) == pytest.approx(8.682e-4, rel=1e-4)  # a quarter in: a cosine, not a line (7.75e-4)
    assert lr_at(1234, OptimConfig(learning_rate=3e-4, decay_lr=False)) == 3e-4


def test_only_matrices_get_weight_decay():
    model = GPT(ModelConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8, bias=True))
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
