"""MFU: FLOPs per token from the shape (checked against a counted backward), peaks from the table or measured once."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import gpt.mfu as mfu
from gpt.config import KernelConfig, ModelConfig
from gpt.model import GPT


def test_gpt2_small_flops_per_token():
    # GPT-2 124M: N = 124,439,808 parameters - 786,432 position embeddings = 123,653,376;
    # attention 12·L·H·Q·T = 12·12·12·64·1024 = 113,246,208
    cfg = ModelConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True)
    assert mfu.flops_per_token(cfg) == 6 * 123_653_376 + 113_246_208


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_behind_the_formula_is_the_models(bias):
    cfg = ModelConfig(block_size=32, vocab_size=61, n_layer=3, n_head=4, n_embd=48, bias=bias)
    attention = 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
    assert (mfu.flops_per_token(cfg) - attention) == 6 * GPT(cfg).num_params()


def test_formula_matches_the_flops_torch_counts_in_a_training_step():
    # math attention computes the full T×T square, as the formula counts it; LayerNorm weights and
    # biases are in N but do no matmul, hence a few per cent of slack
    cfg = ModelConfig(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_embd=64, bias=True)
    model, x = GPT(cfg, kernels=KernelConfig(attention="math")), torch.randint(0, 50, (3, 32))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(mfu.flops_per_token(cfg) * x.numel(), rel=0.03)


def test_datasheet_peaks_by_gpu_name():
    assert mfu.table_peak("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert mfu.table_peak("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert mfu.table_peak("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(156e12)
    assert mfu.table_peak("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    assert mfu.table_peak("NVIDIA A10G", "bf16") is None  # not the A10's datasheet
    assert mfu.table_peak("NVIDIA Mystery 9000", "bf16") is None


def test_known_gpu_uses_the_table_unknown_gpu_is_measured_never_assumed(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype: 42e12)
    monkeypatch.setattr(mfu, "device_name", lambda device: "NVIDIA A100-SXM4-40GB")
    known = mfu.peak_flops(torch.device("cuda"), torch.bfloat16, announce=lambda m: None)
    assert known.flops == pytest.approx(312e12) and "datasheet" in known.source
    monkeypatch.setattr(mfu, "device_name", lambda device: "NVIDIA Mystery 9000")
    unknown = mfu.peak_flops(torch.device("cuda"), torch.bfloat16, announce=lambda m: None)
    assert unknown.flops == 42e12 and unknown.source.startswith("measured bf16")


def test_cpu_peak_is_measured_once_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls, said = [], []
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype: calls.append(dtype) or 5e10)
    first = mfu.peak_flops(torch.device("cpu"), torch.float32, announce=said.append)
    second = mfu.peak_flops(torch.device("cpu"), torch.float32, announce=said.append)
    assert first == second and first.flops == 5e10 and calls == [torch.float32]
    assert len(said) == 1 and "measuring" in said[0]
    assert list(json.loads((tmp_path / "gpt" / "peak_flops.json").read_text()).values()) == [5e10]


def test_a_real_measurement_is_a_plausible_cpu_speed():
    flops = mfu.measure_matmul_flops(torch.device("cpu"), torch.float32, trials=2)
    assert 1e8 < flops < 1e14


def test_mfu_divides_by_every_device():
    m = mfu.MFU(flops_per_token=1_000_000, peak=mfu.Peak(1e12, "test"), world_size=4)
    assert m.of(200_000) == pytest.approx(1e6 * 2e5 / 4e12)


@pytest.mark.parametrize("arch", [dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False),
                                  dict(mlp="swiglu", bias=True)])
def test_the_formula_follows_the_architecture_options(arch):
    cfg = ModelConfig(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_embd=64, **arch)
    model, x = GPT(cfg, kernels=KernelConfig(attention="math")), torch.randint(0, 50, (3, 32))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(mfu.flops_per_token(cfg) * x.numel(), rel=0.03)
