"""The training benchmark: runs a tiny config end to end, and its variants train like the fp32 eager baseline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks import train as bench
from data.dataset import open_dataset
from gpt import mfu
from gpt.config import ModelConfig, OptimConfig, load_config
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.optim import build_optimizer
from tests.conftest import tiny_argv


def losses(cfg, name: str, steps: int = 4) -> list[float]:
    """The per-step train losses of one variant, from the same weights and batches as every other."""
    runner = bench.Runner(bench.parse_variant(name, cfg), cfg)
    try:
        return [runner.step()[2] for _ in range(steps)]
    finally:
        runner.close()


@pytest.fixture
def cfg(tiny_data, tmp_path):
    # no dropout: every variant then computes the same function, so losses differ only by arithmetic
    config, _ = bench.parse(tiny_argv(tiny_data, tmp_path, dropout=0.0, learning_rate=3e-3, warmup_iters=0))
    return config


def test_bench_runs_a_tiny_config_and_prints_the_table_last(tiny_data, tmp_path, capsys, monkeypatch):
    # peaks as on this AVX2 box: bf16 matmuls far slower than fp32, so a bf16 step is held to the fp32 peak
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype: 1e9 if dtype == torch.bfloat16 else 5e10)
    bench.main(tiny_argv(tiny_data, tmp_path) + ["--variants=baseline,fused,math+foreach,bf16,default",
                                                  "--rounds=2", "--iters=2", "--warmup=1", "--profile=fused"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-7].startswith("| variant | AdamW | dtype | compile | attention | act. ckpt |")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out[-5:]]
    assert [r[0] for r in rows] == ["baseline", "fused", "math+foreach", "bf16", "default"]
    assert [r[1:6] for r in rows] == [["loop", "float32", "no", "torch", "no"], ["fused", "float32", "no", "torch", "no"],
                                      ["foreach", "float32", "no", "math", "no"], ["loop", "bfloat16", "no", "torch", "no"],
                                      ["fused", "float32", "no", "auto", "no"]]  # the config as the trainer runs it
    assert rows[0][-1] == "1.00x"
    tokens_per_s = [float(r[7].replace(",", "")) for r in rows]
    mfu_pct = [float(r[8].rstrip("%")) for r in rows]
    config, _ = bench.parse(tiny_argv(tiny_data, tmp_path))
    config.model.vocab_size = open_dataset(tiny_data, "tiny").vocab_size  # as the run resolved it
    per_token = mfu.flops_per_token(config.model)
    for tps, pct in zip(tokens_per_s, mfu_pct):
        assert pct == pytest.approx(100 * per_token * tps / 5e10, rel=0.02, abs=0.06)
    assert all(float(r[9]) > 0 for r in rows)  # the most memory one step holds
    assert "profile of fused, 10 steps" in "\n".join(out)


def test_adamw_implementations_give_the_baselines_losses(cfg):
    base = losses(cfg, "baseline")
    assert base[-1] < base[0]  # it trains
    for name in ("foreach", "fused"):
        assert losses(cfg, name) == pytest.approx(base, rel=1e-5)


def test_the_cpu_default_is_the_fused_adamw_the_benchmark_chose():
    model = GPT(ModelConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    assert build_optimizer(model, OptimConfig(), "cpu").defaults["fused"] is True
    assert build_optimizer(model, OptimConfig(), "mps").defaults["foreach"] is True
    loop = build_optimizer(model, OptimConfig(adamw_impl="loop"), "cpu").defaults
    assert not loop["fused"] and not loop["foreach"]
    with pytest.raises(GPTError, match="not one of"):
        load_config(["--adamw_impl=turbo"])


def test_bf16_autocast_and_math_attention_stay_close_to_fp32_eager(cfg):
    base = losses(cfg, "baseline")
    assert losses(cfg, "math") == pytest.approx(base, rel=1e-5)
    bf16 = losses(cfg, "fused+bf16")
    assert bf16 == pytest.approx(base, rel=2e-2)
    assert bf16 != base  # the autocast really ran in bf16


def test_compiled_step_gives_the_eager_losses(cfg, monkeypatch):
    # a cache that outlives the test run: the first run compiles (~30 s here), later ones take a few seconds
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt" / "inductor-tests"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    cfg.model.n_layer = 1
    assert losses(cfg, "compile", steps=3) == pytest.approx(losses(cfg, "baseline", steps=3), rel=1e-4)


@pytest.mark.parametrize("flags, match", [
    (["--variants=baseline,turbo"], "not a variant"),
    (["--variants=fused,fused"], "twice"),
    (["--variants=baseline", "--profile=compile"], "not one of the variants"),
    (["--rounds=0"], "at least 1"),
    (["--threads=-1"], "threads"),
    (["--roundz=3"], "Did you mean 'rounds'"),
])
def test_bad_flags_say_what_to_do(tiny_data, tmp_path, flags, match):
    with pytest.raises(GPTError, match=match):
        bench.main(tiny_argv(tiny_data, tmp_path) + flags)


def test_speedup_pairs_rounds_so_a_burst_of_load_in_one_round_does_not_decide_it():
    peak = mfu.MFU(1000, mfu.Peak(1e12, "test"), 1)

    def result(ms: list[float]) -> bench.Result:
        return bench.Result(bench.Variant("v", "loop", "float32", False, "torch"), ms, [0.0] * len(ms),
                            [1.0] * len(ms), 0.0, 0.0, 768, peak, iters=2)

    # the variant is twice as fast in the two quiet rounds; a burst of load hits it in round 2, the base in round 3
    base, variant = result([10, 10, 10, 10, 50, 50]), result([5, 5, 50, 50, 25, 25])
    assert variant.round_medians() == [5, 50, 25]
    assert variant.speedup_over(base) == pytest.approx(2.0)
    assert base.median_ms / variant.median_ms == pytest.approx(0.4)  # what unpaired medians would have said
