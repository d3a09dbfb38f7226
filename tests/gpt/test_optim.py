"""The optimizer groups and the learning-rate schedule users configure with nanoGPT's keys."""
import math

import pytest

from gpt.config import ModelConfig, OptimConfig, load_config
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.optim import build_optimizer, lr_at, set_lr

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


def test_wsd_holds_the_peak_then_cools_down_linearly_over_the_last_fraction():
    cfg = OptimConfig(learning_rate=1e-2, min_lr=0.0, warmup_iters=10, lr_decay_iters=1000, lr_schedule="wsd",
                      cooldown_frac=0.4)
    assert lr_at(0, cfg) < lr_at(9, cfg) < 1e-2
    assert lr_at(10, cfg) == lr_at(599, cfg) == lr_at(600, cfg) == pytest.approx(1e-2)
    assert lr_at(800, cfg) == pytest.approx(0.5e-2)
    assert lr_at(1000, cfg) == pytest.approx(0.0) and lr_at(1200, cfg) == pytest.approx(0.0)
    steps = [lr_at(i, cfg) for i in range(600, 1001)]
    assert all(a > b for a, b in zip(steps, steps[1:]))  # straight down, every step
    # a cooldown longer than what follows the warmup starts right after it
    whole = OptimConfig(learning_rate=1.0, min_lr=0.0, warmup_iters=100, lr_decay_iters=200, lr_schedule="wsd",
                        cooldown_frac=1.0)
    assert lr_at(100, whole) == pytest.approx(1.0) and lr_at(150, whole) == pytest.approx(0.5)


def test_linear_decays_in_a_straight_line_to_min_lr():
    cfg = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=1100, lr_schedule="linear")
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(600, cfg) == pytest.approx(0.55e-3)
    assert lr_at(1100, cfg) == pytest.approx(1e-4) and lr_at(5000, cfg) == pytest.approx(1e-4)


@pytest.mark.parametrize("flags, match", [
    (["--lr_schedule=step"], "lr_schedule='step' is not one of cosine, wsd, linear"),
    (["--cooldown_frac=0"], "cooldown_frac=0.0 must be in"),
    (["--optimizer=sgd"], "optimizer='sgd' is not one of adamw, muon"),
    (["--muon_momentum=1.0"], "muon_momentum=1.0 must be in"),
    (["--muon_ns_steps=0"], "muon_ns_steps=0 must be at least 1"),
])
def test_bad_schedule_and_optimizer_keys_are_explained(flags, match):
    with pytest.raises(GPTError, match=match):
        load_config(flags)


def test_one_schedule_drives_both_halves_of_muon():
    model = GPT(ModelConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    opt = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=2e-3, muon_lr=0.04), "cpu")
    set_lr(opt, 1e-3)  # half the peak, as a schedule's cooldown would set it
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 0.02, 0.02])
