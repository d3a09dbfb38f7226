"""Model FLOPs utilisation (MFU): the FLOPs training this model needs, over what the hardware can do.

FLOPs per token, as in PaLM (appendix B) and nanoGPT's `estimate_mfu`:

    6·N + 12·L·H·Q·T

6·N is the weight matmuls (2·N forward, 4·N backward; N counts the token embedding, which is
tied to the output head and so does compute, but not the position embedding, which only adds);
12·L·H·Q·T is attention's QKᵀ and A·V over the full T×T square (L layers, H heads, head size Q,
context T), the convention that makes MFU comparable between codebases.

The peak is the dense tensor-core figure from NVIDIA's datasheet for the GPUs in PEAK_TFLOPS,
in the training dtype ("fp32" is what an fp32 matmul gets, TF32 where the GPU has it: the
trainer turns TF32 on). Any other device — a CPU, an unknown GPU — gets a measured peak: the
best of a few large matmuls in the training dtype, measured once per machine and cached, so
MFU numbers from runs on the same machine are comparable. Never a silent guess.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from gpt.atomic import write_text_atomic
from gpt.config import ModelConfig

# Dense (no sparsity) tensor-core TFLOP/s per GPU, from NVIDIA's product datasheets. Matched as a
# substring of torch.cuda.get_device_name(), first match wins: specific names before general ones.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),  # SXM
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.05, "fp16": 362.05, "fp32": 183.0}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    ("A10G", {}),  # AWS's variant of the A10 has no public datasheet: measured
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),
    ("V100-PCIE", {"fp16": 112.0, "fp32": 14.0}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # SXM2; no bf16, no TF32
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),  # fp32 accumulate
    ("RTX 3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
)

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs (forward + backward) per token of a GPT of this shape: 6·N + 12·L·H·Q·T.

    N counts the weights a token's compute touches: the output head once whether or not it is tied
    (an untied token embedding is a lookup, no matmul), no position table (learned or rotary: both only
    add or rotate); the MLP is 2 matrices of mlp_hidden, or 3 for SwiGLU.
    """
    c, v, q = cfg.n_embd, cfg.vocab_size, cfg.n_embd // cfg.n_head
    hidden = cfg.mlp_hidden
    per_layer = 4 * c * c + (3 if cfg.mlp == "swiglu" else 2) * c * hidden + 2 * c  # attention, MLP, two norm gains
    if cfg.qk_norm:
        per_layer += 2 * q
    if cfg.bias:  # c_attn, c_proj, c_fc, mlp c_proj; LayerNorm biases (RMSNorm has none)
        per_layer += 3 * c + c + (2 if cfg.mlp == "swiglu" else 1) * hidden + c
        per_layer += 2 * c if cfg.norm == "layernorm" else 0
    final_norm = c + (c if cfg.bias and cfg.norm == "layernorm" else 0)
    n = v * c + cfg.n_layer * per_layer + final_norm
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * q * cfg.block_size


@dataclasses.dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s in a dtype, and where the number comes from (for the log)."""

    flops: float
    source: str


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name, or the CPU model from /proc/cpuinfo where there is one."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def table_peak(name: str, dtype: str) -> Optional[float]:
    """PEAK_TFLOPS's figure in FLOP/s for a GPU name and dtype, or None when the table does not know it."""
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, trials: int = 5) -> float:
    """The best FLOP/s of a square matmul over a few trials: big enough to be compute-bound, small enough to be quick."""
    n = 4096 if device.type == "cuda" else 1024
    reps = 10 if device.type == "cuda" else 2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: kernels chosen, threads started
    _synchronize(device)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best


def cache_path() -> Path:
    """Where measured peaks are kept: $XDG_CACHE_HOME/gpt (default ~/.cache/gpt)/peak_flops.json."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gpt" / "peak_flops.json"


def _measured_peak(device: torch.device, dtype: torch.dtype, name: str, announce: Callable[[str], None]) -> Peak:
    # the key holds what changes the answer: the machine, the dtype, the threads a CPU matmul may use, torch
    dname = DTYPE_NAMES.get(dtype, str(dtype))
    key = f"{name}|{device.type}|{dname}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        announce(f"measuring this {device.type}'s peak {dname} matmul speed for MFU (once; cached in {path})...")
        cached[key] = measure_matmul_flops(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(cached, indent=1))
        except OSError:
            pass  # an unwritable cache costs a re-measurement next run, nothing else
    return Peak(cached[key], f"measured {dname} matmul on {name}")


def peak_flops(device: torch.device, dtype: torch.dtype, announce: Callable[[str], None] = print) -> Peak:
    """One device's peak FLOP/s for training in `dtype`: the datasheet for known GPUs, else measured (and cached)."""
    name = device_name(device)
    if device.type == "cuda":
        dname = DTYPE_NAMES.get(dtype, "fp32")
        flops = table_peak(name, dname)
        if flops is not None:
            return Peak(flops, f"{name} {dname} datasheet peak")
    return _measured_peak(device, dtype, name, announce)


def best_peak(device: torch.device, dtype: torch.dtype, say: Callable[[str], None] = print) -> Peak:
    """The device's peak in `dtype`, or its fp32 peak when that is higher.

    A CPU without bf16 instructions (AVX2 only) runs a large bf16 matmul through a slow path
    (~1 GFLOP/s measured here, against ~110 in fp32), so its measured bf16 peak says nothing about
    what the hardware can do; dividing by it would credit a bf16 step with >100% MFU.
    """
    own = peak_flops(device, dtype, say)
    fp32 = peak_flops(device, torch.float32, say)
    return own if own.flops >= fp32.flops else Peak(fp32.flops, fp32.source + " (higher than its bf16 peak)")


@dataclasses.dataclass(frozen=True)
class MFU:
    """Turns a training throughput into model FLOPs utilisation for one run."""

    flops_per_token: int
    peak: Peak  # of one device
    world_size: int

    @classmethod
    def for_run(cls, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, world_size: int,
                announce: Callable[[str], None] = print) -> "MFU":
        """The run's FLOPs per token and its device's peak; `announce` tells the user about a measurement."""
        return cls(flops_per_token(cfg), best_peak(device, dtype, announce), world_size)

    def of(self, tokens_per_s: float) -> float:
        """The fraction (0..1) of the run's devices' peak that `tokens_per_s` global tokens per second use."""
        return self.flops_per_token * tokens_per_s / (self.peak.flops * self.world_size)
