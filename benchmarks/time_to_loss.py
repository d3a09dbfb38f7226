"""Time to a loss: `python launch/bench.py time-to-loss [--runs=baseline,fast] [--key=value ...]`.

What a user wants from a faster recipe is a given loss sooner. This races configs on the
same data in one process: by default the classic CPU config as it is
(configs/shakespeare_char_cpu.yaml) against the fast one (configs/shakespeare_char_fast_cpu.yaml),
each `repeats` times with seeds seed, seed+1, ... Every run is built by gpt/build.py and
stepped by the Trainer's own step, exactly as launch/train.py trains it.

Interleaving: the runs advance in slices of a few steps, always the run that is least far
through its own iterations next, so all of them are in flight from start to end and a load
that comes and goes on a shared machine falls on each alike. Each run's clock counts its
own training steps only; evaluations are measurement and are not counted.

Evaluation: `evals` times per run, evenly spaced over its iterations and always at its
last, on one fixed sample of `eval_windows` val windows (the same windows for every run,
block_size of the baseline) — not the training config's small eval. The target defaults
to the baseline's val loss at its last iteration (its 2000th for the classic CPU config),
measured the same way: the worst of its repeats, so every baseline repeat reaches it.
A run's time to the target is the training time at its first evaluation at or below it.

`tuned_lr` is the baseline at the best learning rate found for it, and `no_X` the fast
config with ingredient X taken out (ABLATIONS; `ablation` names them all), so what each
ingredient adds is seen next to what a better learning rate alone buys.
Prints a table (last) and writes a plot of val loss against training time and tokens.
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from data.loader import BatchLoader
from gpt.build import Run, build_run
from gpt.config import REPO_ROOT, Config, validate
from gpt.errors import GPTError
from gpt.flags import build_config, field_specs, help_text, opt, read_yaml, split_argv, unknown_key_error, wants_help
from gpt.optim import describe_optimizer
from gpt.trainer import Trainer

USAGE = "usage: python launch/bench.py time-to-loss [--key=value ...] (training keys apply to every run)"

# The classic CPU config at the best learning rate found for it (docs/benchmarks.md, "Time to loss"):
# a sweep of learning_rate in {3e-3, 6e-3, 1e-2} x schedules of {750, 1000, 1250} iterations.
TUNED_LR = {"learning_rate": 6e-3, "min_lr": 6e-4, "max_iters": 1000, "lr_decay_iters": 1000}

# The fast config with one ingredient taken out: the value the classic config has for it.
ABLATIONS: dict[str, dict[str, Any]] = {
    "muon": {"optimizer": "adamw"},
    "rope": {"pos_emb": "learned"},
    "qk_norm": {"qk_norm": False},
    "relu2": {"mlp": "gelu"},
    "rmsnorm": {"norm": "layernorm"},
    "untied": {"tie_embeddings": True},
    "zero_init": {"zero_init": False},
    "softcap": {"logit_softcap": 0.0},
    "wsd": {"lr_schedule": "cosine"},
}


@dataclasses.dataclass
class TimeToLossConfig:
    baseline: str = opt(str(REPO_ROOT / "configs" / "shakespeare_char_cpu.yaml"), "the classic config, as it is")
    fast: str = opt(str(REPO_ROOT / "configs" / "shakespeare_char_fast_cpu.yaml"), "the config raced against it")
    runs: str = opt("baseline,fast", "comma-separated: baseline | fast | tuned_lr | no_X (X in " + ", ".join(ABLATIONS)
                    + ") | ablation (every no_X) | NAME=baseline|fast:key=value:key=value (a config with overrides)")
    repeats: int = opt(2, "runs of each, seeds seed, seed+1, ...; all interleaved")
    target: float = opt(0.0, "the val loss to reach; 0 = the baseline's at its last iteration (worst repeat)")
    eval_windows: int = opt(3840, "val windows in the fixed evaluation sample")
    eval_batch: int = opt(64, "windows per evaluation forward")
    evals: int = opt(20, "evaluations per run, evenly spaced over its iterations (the last one included)")
    slice_steps: int = opt(10, "steps a run takes before the next run's turn")
    threads: int = opt(1, "torch threads (1: steady under a shared machine's load; 0 = torch's default)")
    plot: str = opt("time_to_loss.png", "the loss-against-time plot ('' = none)")


@dataclasses.dataclass
class Eval:
    iter: int
    train_s: float
    tokens: int
    val_loss: float


class RaceRun:
    """One run of the race: built as launch/train.py builds it, stepped by Trainer.step, timed step by step."""

    def __init__(self, name: str, cfg: Config, repeat: int, eval_iters: set[int]):
        self.name, self.repeat, self.cfg = name, repeat, cfg
        self.run: Run = build_run(cfg, metrics=False, verbose=False)
        self.trainer = Trainer(self.run)
        self.max_iters = cfg.train.max_iters
        self.eval_iters = eval_iters
        self.train_s = 0.0
        self.evals: list[Eval] = []

    @property
    def progress(self) -> float:
        return self.trainer.iter_num / self.max_iters

    @property
    def done(self) -> bool:
        return self.trainer.iter_num >= self.max_iters

    def steps(self, n: int) -> None:
        """Up to n steps, stopping at the next evaluation point; their time is this run's training time."""
        sync = torch.cuda.synchronize if self.run.device.type == "cuda" else (lambda: None)
        stop = min([self.max_iters] + [i for i in self.eval_iters if i > self.trainer.iter_num])
        t0 = time.perf_counter()
        for _ in range(min(n, stop - self.trainer.iter_num)):
            float(self.trainer.step().loss)  # waits for the step, as a logged step does
        sync()
        self.train_s += time.perf_counter() - t0

    def evaluate_if_due(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Optional[Eval]:
        it = self.trainer.iter_num
        if it not in self.eval_iters or (self.evals and self.evals[-1].iter == it):
            return None
        total = 0.0
        with self.run.strategy.evaluating():
            for x, y in batches:
                total += float(self.run.strategy.loss(x, y))
        e = Eval(it, self.train_s, it * self.run.tokens_per_iter, total / len(batches))
        self.evals.append(e)
        return e

    def first_at(self, target: float) -> Optional[Eval]:
        return next((e for e in self.evals if e.val_loss <= target), None)

    def close(self) -> None:
        self.run.loader.close()


def run_configs(bench: TimeToLossConfig, overrides: dict[str, str]) -> list[tuple[str, Config]]:
    """(name, validated Config) for each run asked for; `overrides` (training keys) apply to all of them."""
    names: list[str] = []
    for item in (s.strip() for s in bench.runs.split(",")):
        if item == "ablation":
            names += [f"no_{k}" for k in ABLATIONS]
        elif item:
            names.append(item)
    if len(set(names)) != len(names):
        raise GPTError(f"--runs={bench.runs!r} names a run twice.")
    if "baseline" not in names and bench.target <= 0:
        raise GPTError("without the baseline in --runs there is no default target: add baseline, or give --target.")
    out = []
    for name in names:
        label, _, spec = name.partition("=")
        base, changes = "fast", {}
        if spec:
            base, *pairs = spec.split(":")
            for pair in pairs:
                key, eq, value = pair.partition("=")
                if not eq:
                    raise GPTError(f"--runs: {pair!r} in {name!r} is not key=value.")
                changes[key] = value
        elif label in ("baseline", "fast"):
            base = label
        elif label == "tuned_lr":
            base, changes = "baseline", {k: str(v) for k, v in TUNED_LR.items()}
        elif label.startswith("no_") and label[3:] in ABLATIONS:
            changes = {k: str(v) for k, v in ABLATIONS[label[3:]].items()}
        else:
            raise GPTError(f"--runs: {name!r} is not a run: use baseline, fast, tuned_lr, ablation, "
                           f"no_X (X in {', '.join(ABLATIONS)}) or NAME=baseline|fast:key=value.")
        if base not in ("baseline", "fast"):
            raise GPTError(f"--runs: {name!r} starts from {base!r}; a run starts from baseline or fast.")
        path = Path(bench.baseline if base == "baseline" else bench.fast)
        for key in changes:
            if key not in field_specs(Config):
                raise unknown_key_error(key, list(field_specs(Config)), f"in --runs ({name})")
        cfg = validate(build_config(Config, read_yaml(path), {**changes, **overrides}, source=str(path)))
        out.append((label, cfg))
    return out


def eval_sample(cfg: Config, run: Run, windows: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed val windows every run is measured on: `windows` of the baseline's block_size, seeded."""
    loader = BatchLoader(run.dataset, cfg.model.block_size, batch, 1, cfg.train.seed)
    try:
        return [loader.eval_batch("val", k) for k in range(-(-windows // batch))]
    finally:
        loader.close()


def race(bench: TimeToLossConfig, configs: list[tuple[str, Config]], say: Callable[[str], None] = print
         ) -> tuple[list[RaceRun], float]:
    """Build every run, advance them interleaved, evaluate each on schedule; returns the runs and the target."""
    if bench.threads:
        torch.set_num_threads(bench.threads)
    runs: list[RaceRun] = []
    try:
        for repeat in range(bench.repeats):
            for name, cfg in configs:
                cfg = copy.deepcopy(cfg)
                cfg.train.seed += repeat
                n = cfg.train.max_iters
                points = {max(1, round(k * n / bench.evals)) for k in range(1, bench.evals + 1)} | {n}
                runs.append(RaceRun(name, cfg, repeat, points))
                if repeat == 0:
                    say(f"{name}: {describe_optimizer(runs[-1].run.strategy.optimizer)}")
        base_cfg = next((c for n, c in configs if n == "baseline"), configs[0][1])
        block = base_cfg.model.block_size
        short = [r.name for r in runs if r.cfg.model.block_size < block]
        if short:
            raise GPTError(f"runs {sorted(set(short))} have a block_size below the baseline's {block}: every run is "
                           "evaluated on the same windows of the baseline's length.")
        batches = eval_sample(base_cfg, runs[0].run, bench.eval_windows, bench.eval_batch)
        say(f"evaluating every run {bench.evals} times on {sum(len(x) for x, _ in batches):,} val windows of {block} "
            f"tokens; {torch.get_num_threads()} torch thread(s)")
        while not all(r.done for r in runs):
            r = min((r for r in runs if not r.done), key=lambda r: r.progress)
            r.steps(bench.slice_steps)
            e = r.evaluate_if_due(batches)
            if e is not None:
                say(f"{r.name} #{r.repeat}: iter {e.iter}, {e.train_s:.1f} s, val {e.val_loss:.4f}")
        target = bench.target
        if target <= 0:
            target = max(r.evals[-1].val_loss for r in runs if r.name == "baseline")
        return runs, target
    finally:
        for r in runs:
            r.close()


def table(runs: list[RaceRun], target: float) -> str:
    """Markdown: one row per config, the median over its repeats, speed-ups paired by repeat with the baseline's."""
    names = list(dict.fromkeys(r.name for r in runs))
    by = {n: sorted((r for r in runs if r.name == n), key=lambda r: r.repeat) for n in names}
    lines = ["| run | iters | tokens/iter | ms/iter | final val loss | time to target, s (each repeat) | "
             "tokens to target | speed-up vs baseline (wall time) | vs fast |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def hit_s(r: RaceRun) -> Optional[float]:
        e = r.first_at(target)
        return e.train_s if e else None

    def paired(a: list[RaceRun], b: list[RaceRun]) -> str:
        ratios = [hit_s(x) / hit_s(y) for x, y in zip(a, b) if hit_s(x) and hit_s(y)]
        return f"{statistics.median(ratios):.2f}x" if ratios else "-"

    for n in names:
        rs = by[n]
        hits = [r.first_at(target) for r in rs]
        times = ", ".join(f"{e.train_s:.1f}" if e else "not reached" for e in hits)
        tokens = [e.tokens for e in hits if e]
        tok = f"{statistics.median(tokens):,.0f}" if len(tokens) == len(hits) else "-"
        ms = statistics.median(1000 * r.train_s / r.max_iters for r in rs)
        final = statistics.median(r.evals[-1].val_loss for r in rs)
        lines.append(f"| {n} | {rs[0].max_iters} | {rs[0].run.tokens_per_iter:,} | {ms:.1f} | {final:.4f} | {times} | "
                     f"{tok} | {paired(by['baseline'], rs) if 'baseline' in by else '-'} | "
                     f"{paired(rs, by['fast']) if 'fast' in by else '-'} |")
    return "\n".join(lines)


def plot(path: Path, runs: list[RaceRun], target: float) -> Path:
    """Val loss against training seconds (left) and tokens (right), one line per run, the target dashed."""
    from matplotlib.figure import Figure  # only a run that plots pays for matplotlib

    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    names = list(dict.fromkeys(r.name for r in runs))
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for r in runs:
        for ax, xs in zip(axes, ([e.train_s for e in r.evals], [e.tokens for e in r.evals])):
            ax.plot(xs, [e.val_loss for e in r.evals], color=colors[r.name], marker="o", markersize=3, linewidth=1.5,
                    alpha=0.9 if r.repeat == 0 else 0.5, label=r.name if r.repeat == 0 else None)
    for ax, xlabel in zip(axes, ("training wall time, s (evaluations not counted)", "training tokens")):
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.4f}")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("val loss (fixed sample)")
    losses = [e.val_loss for r in runs for e in r.evals]
    axes[0].set_ylim(min(losses) - 0.05, min(max(losses), target + 1.0))
    axes[0].legend(loc="upper right")
    fig.suptitle("Time to loss: val loss against training time and tokens")
    fig.savefig(path, format="png")
    return path


def parse(argv: list[str]) -> tuple[TimeToLossConfig, dict[str, str]]:
    """Bench keys to TimeToLossConfig; any training key (e.g. --data_dir) is an override for every run."""
    positional, overrides = split_argv(argv, allow_positional=False)
    bench_keys = set(field_specs(TimeToLossConfig))
    bench = build_config(TimeToLossConfig, {}, {k: v for k, v in overrides.items() if k in bench_keys})
    rest = {k: v for k, v in overrides.items() if k not in bench_keys}
    known = list(bench_keys) + list(field_specs(Config))
    for key in rest:
        if key not in known:
            raise unknown_key_error(key, known, "on the command line")
    if min(bench.repeats, bench.eval_windows, bench.eval_batch, bench.evals, bench.slice_steps) < 1:
        raise GPTError("--repeats, --eval_windows, --eval_batch, --evals and --slice_steps must each be at least 1.")
    if bench.threads < 0:
        raise GPTError(f"--threads={bench.threads} must be 0 (torch's default) or a number of threads.")
    return bench, rest


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(help_text(TimeToLossConfig, USAGE) + "\n\nand every training key: python launch/train.py --help")
        raise SystemExit(0)
    bench, overrides = parse(argv)
    configs = run_configs(bench, overrides)
    start = time.perf_counter()
    runs, target = race(bench, configs)
    if bench.plot:
        print(f"plot: {plot(Path(bench.plot), runs, target)}")
    how = "given" if bench.target > 0 else "the baseline's val loss at its last iteration, worst repeat"
    print(f"\ntarget val loss {target:.4f} ({how}); {bench.repeats} repeat(s) of each run, interleaved; "
          f"{torch.get_num_threads()} torch thread(s); bench wall time {time.perf_counter() - start:.0f} s\n")
    print(table(runs, target))
