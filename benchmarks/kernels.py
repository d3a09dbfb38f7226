"""Our Triton ops against torch, forward + backward: `python launch/bench.py kernels [--key=value ...]`.

Each op is timed with its torch counterpart on the same inputs (SDPA with the
flash backend, F.layer_norm, F.cross_entropy, linear + F.cross_entropy) and
reported as TFLOP/s (attention, the fused linear loss) or GB/s of the bytes
the op must move (LayerNorm, cross-entropy), with the peak memory the
forward + backward allocates beyond its inputs. The table comes last.

On a CUDA GPU the sizes are the real ones (GPT-2 small, bf16). Without one the
kernels can only run through Triton's interpreter, so the benchmark then runs
tiny sizes in fp32 to show the harness works; its times measure the
interpreter, not the kernels.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import kernels
from gpt.errors import GPTError
from gpt.flags import opt, parse_args

USAGE = "usage: python launch/bench.py kernels [--key=value ...]"
OPS = ("attention", "layernorm", "cross_entropy", "fused_linear")


@dataclasses.dataclass
class KernelBenchConfig:
    ops: str = opt(",".join(OPS), "comma-separated subset of " + ", ".join(OPS))
    dtype: str = opt("auto", "auto = bfloat16 on CUDA, float32 under the interpreter | float32 | float16 | bfloat16")
    batch: int = opt(8, "attention: batch")
    heads: int = opt(12, "attention: heads")
    seq_len: int = opt(1024, "attention: sequence length")
    head_dim: int = opt(64, "attention: head dim")
    ln_rows: int = opt(8192, "layernorm: rows")
    ln_dim: int = opt(768, "layernorm: row width")
    tokens: int = opt(8192, "rows of the cross-entropy and fused linear loss")
    vocab: int = opt(50304, "cross-entropy: vocabulary")
    n_embd: int = opt(768, "fused linear loss: hidden width")
    warmup: int = opt(3, "untimed calls before timing")
    iters: int = opt(20, "timed calls per implementation")


TINY = dict(batch=1, heads=2, seq_len=64, head_dim=32, ln_rows=64, ln_dim=96, tokens=32, vocab=500, n_embd=32,
            warmup=1, iters=2)


@dataclasses.dataclass
class Row:
    op: str
    impl: str
    ms: float
    rate: str
    peak_mib: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """Median milliseconds of fn() and the peak MiB it allocates beyond what existed before (CUDA only)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), peak


def _fwd_bwd(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    grad: list[torch.Tensor] = []  # one upstream gradient, made once, so no extra kernel is timed

    def run() -> None:
        out = forward()
        if not grad:
            grad.append(torch.ones_like(out))
        out.backward(grad[0])
        for t in leaves:  # freed here, so the next call's peak counts its own gradients
            t.grad = None
    return run


def _leaf(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=device, dtype=torch.float32) * std).to(dtype).requires_grad_()


def bench_attention(c: KernelBenchConfig, dtype, device) -> list[tuple[str, Callable[[], None], float]]:
    q, k, v = (_leaf((c.batch, c.heads, c.seq_len, c.head_dim), dtype, device) for _ in range(3))
    flops = 3.5 * 2 * 2 * c.batch * c.heads * c.seq_len ** 2 * c.head_dim / 2  # causal half; bwd = 2.5x fwd

    def torch_sdpa() -> torch.Tensor:
        if device.type == "cuda" and dtype != torch.float32:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return [("triton", _fwd_bwd(lambda: kernels.flash_attention(q, k, v, impl="triton"), [q, k, v]), flops),
            ("torch sdpa", _fwd_bwd(torch_sdpa, [q, k, v]), flops)]


def bench_layernorm(c: KernelBenchConfig, dtype, device):
    x = _leaf((c.ln_rows, c.ln_dim), dtype, device)
    w, b = _leaf((c.ln_dim,), dtype, device), _leaf((c.ln_dim,), dtype, device)
    nbytes = 5 * x.numel() * x.element_size()  # fwd reads x, writes y; bwd reads x, dy, writes dx
    return [("triton", _fwd_bwd(lambda: kernels.layer_norm(x, w, b, impl="triton"), [x, w, b]), nbytes),
            ("torch F.layer_norm", _fwd_bwd(lambda: F.layer_norm(x, (c.ln_dim,), w, b), [x, w, b]), nbytes)]


def bench_cross_entropy(c: KernelBenchConfig, dtype, device):
    logits = _leaf((c.tokens, c.vocab), dtype, device, std=2.0)
    targets = torch.randint(0, c.vocab, (c.tokens,), device=device)
    nbytes = 2 * logits.numel() * logits.element_size()  # at least: read the logits, write their gradient
    return [("triton", _fwd_bwd(lambda: kernels.cross_entropy(logits, targets, impl="triton"), [logits]), nbytes),
            ("torch F.cross_entropy", _fwd_bwd(lambda: F.cross_entropy(logits, targets), [logits]), nbytes),
            ("torch, fp32 upcast", _fwd_bwd(lambda: F.cross_entropy(logits.float(), targets), [logits]), nbytes)]


def bench_fused_linear(c: KernelBenchConfig, dtype, device):
    hidden = _leaf((c.tokens, c.n_embd), dtype, device)
    weight = _leaf((c.vocab, c.n_embd), dtype, device, std=0.02)
    targets = torch.randint(0, c.vocab, (c.tokens,), device=device)
    flops = 6 * c.tokens * c.vocab * c.n_embd  # logits, dhidden, dweight
    chunk = min(1024, c.tokens)
    ours = lambda: kernels.fused_linear_cross_entropy(hidden, weight, targets, chunk=chunk, impl="triton")  # noqa
    eager = lambda: F.cross_entropy(hidden @ weight.t(), targets)  # noqa
    return [("triton", _fwd_bwd(ours, [hidden, weight]), flops),
            ("torch linear + F.cross_entropy", _fwd_bwd(eager, [hidden, weight]), flops)]


BENCHES = {"attention": (bench_attention, "TFLOP/s"), "layernorm": (bench_layernorm, "GB/s"),
           "cross_entropy": (bench_cross_entropy, "GB/s"), "fused_linear": (bench_fused_linear, "TFLOP/s")}


def setup(cfg: KernelBenchConfig) -> tuple[KernelBenchConfig, torch.dtype, torch.device]:
    """The device, dtype and sizes this machine can bench, or a GPTError that says what is needed."""
    unknown = [op for op in cfg.ops.split(",") if op not in OPS]
    if unknown:
        raise GPTError(f"--ops: unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}.")
    if not kernels.TRITON:
        raise GPTError("the kernel benchmark needs triton (pip install triton) and a CUDA GPU.")
    names = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype not in names:
        raise GPTError(f"--dtype={cfg.dtype!r} is not one of {', '.join(names)}.")
    if torch.cuda.is_available() and not kernels.INTERPRETER:
        return cfg, names[cfg.dtype] or torch.bfloat16, torch.device("cuda")
    if not kernels.INTERPRETER:
        raise GPTError("the kernel benchmark needs a CUDA GPU: without one our kernels run only through Triton's "
                       "interpreter. To check the harness on CPU at tiny sizes (timing the interpreter, not the "
                       "kernels): TRITON_INTERPRET=1 python launch/bench.py kernels")
    if names[cfg.dtype] == torch.bfloat16:
        raise GPTError("bf16 dots are broken in Triton's interpreter: use --dtype=float32 or float16 on CPU.")
    print("no CUDA GPU: running tiny sizes through Triton's interpreter; the times measure the interpreter.")
    return dataclasses.replace(cfg, **TINY), names[cfg.dtype] or torch.float32, torch.device("cpu")


def _fmt_rate(work: float, ms: float, unit: str) -> str:
    return f"{work / (ms * 1e-3) / 1e12:.1f}" if unit == "TFLOP/s" else f"{work / (ms * 1e-3) / 1e9:.0f}"


def run(cfg: KernelBenchConfig) -> list[Row]:
    cfg, dtype, device = setup(cfg)
    torch.manual_seed(0)
    rows: list[Row] = []
    for op in cfg.ops.split(","):
        make, unit = BENCHES[op]
        for impl, fn, work in make(cfg, dtype, device):
            ms, peak = measure(fn, device, cfg.warmup, cfg.iters)
            row = Row(op, impl, ms, f"{_fmt_rate(work, ms, unit)} {unit}", "n/a" if peak is None else f"{peak:.0f}")
            print(f"{op:<14} {impl:<32} {ms:9.3f} ms  {row.rate:>14}  peak {row.peak_mib} MiB", flush=True)
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def table(rows: list[Row]) -> str:
    """A Markdown table with each op's speed relative to the first torch row of that op."""
    lines = ["| op | impl | ms (fwd+bwd) | rate | peak MiB | speed vs torch |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        base = next(x for x in rows if x.op == r.op and x.impl != "triton")
        lines.append(f"| {r.op} | {r.impl} | {r.ms:.3f} | {r.rate} | {r.peak_mib} | {base.ms / r.ms:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cfg = parse_args(KernelBenchConfig, argv, USAGE)
    if cfg.warmup < 0 or cfg.iters < 1:
        raise GPTError("--warmup must be >= 0 and --iters >= 1.")
    rows = run(cfg)
    shape = (f"attention B={cfg.batch} H={cfg.heads} T={cfg.seq_len} D={cfg.head_dim} causal; layernorm "
             f"({cfg.ln_rows}, {cfg.ln_dim}); cross-entropy ({cfg.tokens}, {cfg.vocab}); fused linear C={cfg.n_embd}")
    print(f"\n{kernels.describe()}\n{shape if torch.cuda.is_available() else 'tiny interpreter sizes'}\n")
    print(table(rows))
