"""Training throughput, variants side by side: `python launch/bench.py train [CONFIG.yaml] [--key=value ...]`.

Each variant is the same model (same initial weights, same batches, same LR schedule) trained
by the single-process strategy, with one thing changed from the baseline — the plain eager
fp32 step: SDPA attention, AdamW one parameter at a time, no compile. Variants are written
as `+`-joined changes: `loop`, `foreach`, `fused` (the AdamW implementation), `bf16` (autocast;
weights and optimizer state stay fp32), `compile`, `math` or `sdpa` (attention), `ckpt`
(activation checkpointing), and `default` (the config as `launch/train.py` would run it). Every variant is built and warmed up
first (the compile time is reported apart), then timed in rounds, the variant order rotating
each round, so a load that comes and goes on a shared machine falls on all of them alike:
compare the ratios of one run, not the absolute times of two.

Per variant: median ms per iteration with its 10th and 90th percentiles, tokens/s, MFU
(gpt/mfu.py, against the device's peak in the variant's dtype), the most memory one step
holds beyond what existed before it (torch's allocations, from the profiler's memory events),
the share of the step spent waiting for the loader, and the mean train loss of the last
steps (same data everywhere, so a variant that trains worse shows it), and the speed-up over the
first variant, the median of its per-round ratios. The table comes last.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gpt.build import build_run
from gpt.config import REPO_ROOT, Config, validate
from gpt.errors import GPTError
from gpt.flags import build_config, field_specs, opt, read_yaml, split_argv, unknown_key_error, wants_help, help_text
from gpt.mfu import MFU, best_peak, flops_per_token
from gpt.runtime import resolve_device
from gpt.trainer import Trainer

USAGE = "usage: python launch/bench.py train [CONFIG.yaml] [--key=value ...] (training keys too, e.g. --batch_size=16)"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "shakespeare_char_cpu.yaml"
PROFILE_STEPS = 10
CHANGES = ("baseline", "default", "loop", "foreach", "fused", "bf16", "compile", "math", "torch", "ckpt")


@dataclasses.dataclass
class TrainBenchConfig:
    variants: str = opt("baseline,foreach,fused,math,bf16,compile,fused+compile,default",
                        "comma-separated variants, each changes joined by '+': " + ", ".join(CHANGES))
    rounds: int = opt(20, "timed rounds; each runs every variant for `iters` steps")
    iters: int = opt(3, "timed steps per variant per round: few, so a burst of load falls on every variant")
    warmup: int = opt(5, "untimed steps per variant before the rounds (the compile happens in the first)")
    loss_steps: int = opt(20, "the loss column averages this many last steps")
    cache_dir: str = opt("", "TORCHINDUCTOR_CACHE_DIR for compiled variants; '' = the env's, else ~/.cache/gpt/inductor")
    threads: int = opt(0, "torch intra-op threads; 0 = torch's default (one per core)")
    profile: str = opt("", "a variant's name: after the rounds, profile 10 of its steps and print where the time goes")


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one variant trains: the AdamW implementation, precision, compile, attention and activation checkpointing."""

    name: str
    optimizer: str  # loop | foreach | fused | auto
    dtype: str  # float32 | bfloat16 | the config's
    compile: bool
    attention: str
    checkpointing: bool = False


def parse_variant(name: str, cfg: Config) -> Variant:
    """`fused+bf16+compile` -> a Variant; the baseline is loop AdamW, fp32, eager, torch's attention (SDPA)."""
    parts = [p for p in name.split("+") if p]
    unknown = [p for p in parts if p not in CHANGES]
    if not parts or unknown:
        raise GPTError(f"--variants: {name!r} is not a variant: join changes with '+' from {', '.join(CHANGES)} "
                       "(e.g. fused+bf16+compile).")
    v = Variant(name, "loop", "float32", False, "torch")
    if "default" in parts:  # the config as the trainer runs it; later changes apply on top
        v = Variant(name, "auto", cfg.train.dtype, cfg.train.compile, cfg.kernels.attention,
                    cfg.train.activation_checkpointing)
    for p in parts:
        if p in ("loop", "foreach", "fused"):
            v = dataclasses.replace(v, optimizer=p)
        elif p == "bf16":
            v = dataclasses.replace(v, dtype="bfloat16")
        elif p == "compile":
            v = dataclasses.replace(v, compile=True)
        elif p in ("math", "torch"):
            v = dataclasses.replace(v, attention=p)
        elif p == "ckpt":
            v = dataclasses.replace(v, checkpointing=True)
    return v


@dataclasses.dataclass
class Result:
    variant: Variant
    step_ms: list[float]
    data_ms: list[float]
    losses: list[float]
    first_step_s: float
    peak_mib: float
    tokens_per_iter: int
    mfu: MFU
    iters: int  # steps per round: step_ms holds the rounds one after another

    def pct(self, q: float) -> float:
        s = sorted(self.step_ms)
        return s[min(len(s) - 1, round(q * (len(s) - 1)))]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_iter / (self.median_ms / 1e3)

    def round_medians(self) -> list[float]:
        return [statistics.median(self.step_ms[i:i + self.iters]) for i in range(0, len(self.step_ms), self.iters)]

    def speedup_over(self, base: "Result") -> float:
        """The median over rounds of base's ms/iter over this one's in the same round.

        Paired by round, so a load that comes and goes between rounds cancels out of the ratio.
        """
        return statistics.median(b / r for b, r in zip(base.round_medians(), self.round_medians()))

    @property
    def data_share(self) -> float:
        return sum(self.data_ms) / sum(self.step_ms)


class Runner:
    """One variant's run, built by gpt/build.py as launch/train.py builds it, stepped by the Trainer's own step."""

    def __init__(self, variant: Variant, cfg: Config) -> None:
        cfg = copy.deepcopy(cfg)  # the same seed, so the same initial weights and batches for every variant
        cfg.optim.adamw_impl = variant.optimizer
        cfg.train.dtype, cfg.train.compile, cfg.kernels.attention = variant.dtype, variant.compile, variant.attention
        cfg.train.activation_checkpointing = variant.checkpointing
        self.run = build_run(cfg, metrics=False, verbose=False)
        self.trainer = Trainer(self.run)
        # the table names what ran: "auto" resolved to the optimizer and dtype actually built
        optimizer = self.run.strategy.optimizer
        defaults = optimizer.defaults  # Muon keeps the AdamW implementation of its other half as adamw_impl
        adamw = getattr(optimizer, "adamw_impl", None) or (
            "fused" if defaults["fused"] else "foreach" if defaults["foreach"] else "loop")
        self.variant = dataclasses.replace(variant, optimizer=adamw, dtype=str(self.run.dtype).removeprefix("torch."))
        self.step_ms: list[float] = []
        self.data_ms: list[float] = []
        self.losses: list[float] = []  # of the timed steps
        self.losses_seen: list[float] = []  # of every step, warm-up and profiled ones included

    @property
    def dtype(self) -> torch.dtype:
        return self.run.dtype

    def step(self) -> tuple[float, float, float]:
        """One optimizer step: (step ms, ms spent waiting for batches, mean loss)."""
        start = time.perf_counter()
        result = self.trainer.step()
        loss = float(result.loss)  # waits for the step to finish, as a logged step would
        self.losses_seen.append(loss)
        return (time.perf_counter() - start) * 1e3, result.data_s * 1e3, loss

    def timed(self, n: int) -> None:
        for _ in range(n):
            ms, data, loss = self.step()
            self.step_ms.append(ms)
            self.data_ms.append(data)
            self.losses.append(loss)

    def peak_step_mib(self) -> float:
        """The most bytes one step holds at once beyond what was allocated before it (profiler memory events)."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        return peak / 2**20

    def close(self) -> None:
        self.run.loader.close()


def profile_steps(runner: Runner, steps: int) -> str:
    """torch.profiler's table of the ops that took the most time (self CPU) over `steps` steps of one variant."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return f"\nprofile of {runner.variant.name}, {steps} steps (self CPU time per op):\n{ops}"


def run(cfg: Config, bench: TrainBenchConfig, say: Callable[[str], None] = print) -> list[Result]:
    """Build every variant, warm each up, time them in rotating rounds, then measure one step's memory each."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        raise GPTError("the training benchmark measures CPU variants (AdamW loop/foreach/fused, bf16 autocast, "
                       "compile); on a GPU use launch/train.py, whose log shows ms/iter and MFU, or --device=cpu.")
    variants = [parse_variant(n.strip(), cfg) for n in bench.variants.split(",") if n.strip()]
    if len({v.name for v in variants}) != len(variants):
        raise GPTError(f"--variants={bench.variants!r} names a variant twice.")
    if bench.profile and bench.profile not in {v.name for v in variants}:
        raise GPTError(f"--profile={bench.profile!r} is not one of the variants ({bench.variants}): name one of them.")
    if any(v.compile for v in variants):
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", bench.cache_dir or str(Path.home() / ".cache/gpt/inductor"))
        if bench.cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = bench.cache_dir
    if bench.threads:
        torch.set_num_threads(bench.threads)
    runners: list[Runner] = []
    first: dict[str, float] = {}
    try:
        for v in variants:
            r = Runner(v, cfg)
            runners.append(r)
            t0 = time.perf_counter()
            r.step()
            first[v.name] = time.perf_counter() - t0
            for _ in range(max(0, bench.warmup - 1)):
                r.step()
            say(f"built {v.name}: first step {first[v.name]:.2f} s")
        for rnd in range(bench.rounds):
            shift = rnd % len(runners)
            for r in runners[shift:] + runners[:shift]:
                r.timed(bench.iters)
            say(f"round {rnd + 1}/{bench.rounds}: " + ", ".join(
                f"{r.variant.name} {statistics.median(r.step_ms[-bench.iters:]):.1f}" for r in runners) + " ms/iter")
        if bench.profile:
            say(profile_steps(next(r for r in runners if r.variant.name == bench.profile), PROFILE_STEPS))
        results = []
        for r in runners:
            mfu = MFU(flops_per_token(r.run.cfg.model), best_peak(device, r.dtype, say), 1)
            results.append(Result(r.variant, r.step_ms, r.data_ms, r.losses, first[r.variant.name],
                                  r.peak_step_mib(), r.run.tokens_per_iter, mfu, bench.iters))
        return results
    finally:
        for r in runners:
            r.close()


def table(results: list[Result], loss_steps: int) -> str:
    """Markdown, one row per variant, with the speed-up over the first row (the baseline when it is first),
    taken round by round (see Result.speedup_over)."""
    base = results[0]
    lines = ["| variant | AdamW | dtype | compile | attention | act. ckpt | ms/iter median (p10-p90) | tokens/s | MFU | "
             "peak MiB/step | data share | first step s | loss, last steps | speed vs " + base.variant.name + ", paired by round |",
             "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        v = r.variant
        loss = statistics.fmean(r.losses[-loss_steps:])
        lines.append(f"| {v.name} | {v.optimizer} | {v.dtype} | {'yes' if v.compile else 'no'} | {v.attention} | "
                     f"{'yes' if v.checkpointing else 'no'} | "
                     f"{r.median_ms:.1f} ({r.pct(0.1):.1f}-{r.pct(0.9):.1f}) | {r.tokens_per_s:,.0f} | "
                     f"{r.mfu.of(r.tokens_per_s):.1%} | {r.peak_mib:.1f} | {r.data_share:.1%} | {r.first_step_s:.1f} | "
                     f"{loss:.4f} | {r.speedup_over(base):.2f}x |")
    return "\n".join(lines)


def split_argv_configs(argv: list[str], bench_cls: type, usage: str, default_config: Path) -> tuple[Config, Any]:
    """`[CONFIG.yaml] [--key=value ...]`: keys of `bench_cls` configure the benchmark, every other key the training
    Config (validated as launch/train.py validates it). Shared by the benchmarks that build runs."""
    positional, overrides = split_argv(argv, allow_positional=True)
    if len(positional) > 1:
        raise GPTError(f"expected at most one config file, got {positional}. {usage}")
    bench_keys = set(field_specs(bench_cls))
    bench = build_config(bench_cls, {}, {k: v for k, v in overrides.items() if k in bench_keys})
    path = Path(positional[0]) if positional else default_config
    rest = {k: v for k, v in overrides.items() if k not in bench_keys}
    known = list(bench_keys) + list(field_specs(Config))
    for key in rest:  # name close bench keys too, not only training ones
        if key not in known:
            raise unknown_key_error(key, known, "on the command line")
    return validate(build_config(Config, read_yaml(path), rest, source=str(path))), bench


def parse(argv: list[str]) -> tuple[Config, TrainBenchConfig]:
    cfg, bench = split_argv_configs(argv, TrainBenchConfig, USAGE, DEFAULT_CONFIG)
    if bench.rounds < 1 or bench.iters < 1 or bench.warmup < 1 or bench.loss_steps < 1:
        raise GPTError("--rounds, --iters, --warmup and --loss_steps must each be at least 1.")
    if bench.threads < 0:
        raise GPTError(f"--threads={bench.threads} must be 0 (torch's default) or a number of threads.")
    return cfg, bench


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(help_text(TrainBenchConfig, USAGE) + "\n\nand every training key: python launch/train.py --help")
        raise SystemExit(0)
    cfg, bench = parse(argv)
    results = run(cfg, bench)
    m = cfg.model
    base = results[0]
    print(f"\n{m.n_layer} layers x {m.n_head} heads x {m.n_embd} wide, block {m.block_size}, batch "
          f"{cfg.data.batch_size} x {cfg.train.gradient_accumulation_steps} accumulation = {base.tokens_per_iter:,} "
          f"tokens/iter; {torch.get_num_threads()} torch threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}; {bench.rounds} rounds x "
          f"{bench.iters} iters per variant after {bench.warmup} warm-up; MFU peaks: "
          + "; ".join(sorted({f"{r.variant.dtype} {r.mfu.peak.flops / 1e9:.0f} GFLOP/s ({r.mfu.peak.source})"
                              for r in results})) + "\n")
    print(table(results, bench.loss_steps))
