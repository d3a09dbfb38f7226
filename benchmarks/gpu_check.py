"""The GPU acceptance check: `make gpu-check` (= `python -m benchmarks.gpu_check`), one command, minutes.

Run it on the first GPU we get. It writes <out>/gpu-check.json (every number) and
<out>/gpu-check.md (the tables for docs/benchmarks.md), with each stage's log beside them,
and goes on past a failing stage so one run shows everything:
1. tests     `pytest tests/gpu`: our kernels in bf16 at real sizes against float64 and torch.
2. kernels   `launch/bench.py kernels`: each op against torch (SDPA's flash backend, F.layer_norm,
             F.cross_entropy; the fused linear loss's peak memory against eager logits).
3. shakespeare  configs/shakespeare_char.yaml for `shakespeare_iters` steps, our attention and
             torch's, eager and compiled: ms/iter, tokens/s, MFU, and the projected wall time of
             the config's 5000 iterations with its 21 evaluations.
4. gpt2      the GPT-2 124M shape (block 1024, batch 16, vocab 50304, random tokens, bf16,
             compiled): MFU and peak memory, with and without the fused linear loss, and with
             activation checkpointing.
5. distributed  `torchrun --nproc_per_node=1` DDP, DeepSpeed ZeRO-2 and FSDP for `dist_iters`
             steps in bf16: losses within `dist_tol` of the single-process run, and ms/iter.
Every stage builds through gpt/build.py and steps Trainer.step, as training does. It runs with
the machine's own python (CUDA torch and triton, whatever versions), PYTHONPATH=. and, for
stage 5, DeepSpeed from a wheelhouse carried over (`make gpu-wheels` builds it here).
`--smoke=True` runs every stage's plumbing on CPU at toy sizes, which is how the test suite
keeps this script working without a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gpt.build import build_run
from gpt.config import REPO_ROOT, load_config
from gpt.errors import GPTError
from gpt.flags import opt, parse_args
from gpt.mfu import MFU
from gpt.trainer import Trainer

USAGE = "usage: python -m benchmarks.gpu_check [--out=DIR] [--stages=...] [--key=value ...]"
STAGES = ("tests", "kernels", "shakespeare", "gpt2", "distributed")
DIST_RUNS = ("single", "ddp", "zero2", "fsdp")
# name -> (fused linear loss, activation checkpointing)
GPT2_VARIANTS = {"logits": (False, False), "fused_linear_loss": (True, False), "activation_checkpointing": (False, True)}


@dataclasses.dataclass
class GpuCheckConfig:
    out: str = opt("gpu-check", "folder for gpu-check.json, gpu-check.md and each stage's log")
    stages: str = opt(",".join(STAGES), "comma-separated stages to run: " + ", ".join(STAGES))
    data_dir: str = opt("data", "where shakespeare_char is prepared (make data)")
    shakespeare_iters: int = opt(500, "timed steps per shakespeare variant")
    gpt2_steps: int = opt(20, "timed steps per GPT-2 124M variant (after 3 warm-up steps)")
    dist_iters: int = opt(20, "steps of the single / DDP / ZeRO-2 / FSDP comparison")
    dist_tol: float = opt(1e-2, "largest per-step loss difference DDP, ZeRO-2 and FSDP may have from one process")
    dist_runs: str = opt(",".join(DIST_RUNS), "which of the distributed stage's runs to start (single is the reference)")
    smoke: bool = opt(False, "CPU, toy sizes: check the script itself, not a GPU")


@dataclasses.dataclass
class Stage:
    name: str
    ok: bool
    seconds: float
    results: dict[str, Any]
    note: str = ""


# -- helpers --------------------------------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 600) -> int:
    """Run a command with its output in `log`; its exit code."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                              stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode


def _time_steps(trainer: Trainer, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """(ms per step, loss per step) of `steps` steps after `warmup` untimed ones (the compile happens there)."""
    for _ in range(warmup):
        float(trainer.step().loss)
    ms, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        result = trainer.step()
        losses.append(float(result.loss))  # waits for the step, as a logged step does
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, losses


def _shrink(argv: list[str], smoke: bool) -> list[str]:
    """On --smoke, a toy model on CPU instead of the config's."""
    if not smoke:
        return argv
    return argv + ["--device=cpu", "--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                   "--batch_size=2", "--eval_iters=2"]


# -- stages ---------------------------------------------------------------------------------------------
def stage_tests(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    code = _run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/gpu"],
                       out / "tests.log")
    tail = (out / "tests.log").read_text().strip().splitlines()[-1:] or [""]
    if code not in (0, 5) and not cfg.smoke:
        raise RuntimeError(f"tests/gpu failed: {tail[0]}")
    return {"exit_code": code, "summary": tail[0]}


def stage_kernels(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    from benchmarks import kernels as kbench
    if cfg.smoke and not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU: the kernel benchmark times real kernels only"}
    rows = kbench.run(kbench.KernelBenchConfig())
    table = kbench.table(rows)
    (out / "kernels.md").write_text(table + "\n")
    return {"rows": [dataclasses.asdict(r) for r in rows], "table": table}


def stage_shakespeare(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    variants = {}
    for attention in ("triton", "torch"):
        for compiled in (False,) if cfg.smoke else (False, True):  # compile on CPU is other tests' business
            if cfg.smoke and attention == "triton" and not torch.cuda.is_available():
                continue  # our kernels run on a GPU (or the interpreter, which this is not about)
            name = f"{attention}{'+compile' if compiled else ''}"
            argv = _shrink(["configs/shakespeare_char.yaml", f"--data_dir={cfg.data_dir}", f"--out_dir={out / name}",
                            f"--attention={attention}", f"--compile={compiled}"], cfg.smoke)
            run = build_run(load_config(argv), metrics=False, verbose=False)
            trainer = Trainer(run)
            first = time.perf_counter()
            ms, losses = _time_steps(trainer, warmup=3, steps=cfg.shakespeare_iters)
            _sync()
            t0 = time.perf_counter()
            trainer.evaluate()
            _sync()
            eval_s = time.perf_counter() - t0
            run.loader.close()
            c = run.cfg
            median = statistics.median(ms)
            tokens_per_s = run.tokens_per_iter / (median / 1e3)
            mfu = MFU.for_run(c.model, run.device, run.dtype, 1, announce=lambda _: None).of(tokens_per_s)
            evals = c.train.max_iters // c.train.eval_interval + 1
            variants[name] = {
                "ms_per_iter": median, "ms_p90": float(np.percentile(ms, 90)), "tokens_per_s": tokens_per_s,
                "mfu": mfu, "eval_s": eval_s, "warmup_and_timed_s": time.perf_counter() - first - eval_s,
                "loss_first": losses[0], "loss_last": losses[-1],
                "projected_5000_s": c.train.max_iters * median / 1e3 + evals * eval_s,
            }
    return {"variants": variants}


def _random_gpt2_dataset(root: Path, tokens: int) -> None:
    """A dataset of random GPT-2 token ids in our shard format: what the GPT-2 shape trains on here."""
    from data.shards import write_shard
    from data.subword import gpt2_meta
    folder = root / "random_gpt2"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta = gpt2_meta()
    for split, n in (("train", tokens), ("val", tokens // 4)):
        write_shard(folder / f"{split}_000000.bin", rng.integers(0, meta["vocab_size"], n), meta["vocab_size"])
    (folder / "meta.json").write_text(json.dumps({"tokenizer": meta, "source": "random"}))


def stage_gpt2(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        _random_gpt2_dataset(Path(tmp), 2_000_000 if not cfg.smoke else 20_000)
        for name, (fused, checkpointing) in GPT2_VARIANTS.items():
            keys = dict(dataset="random_gpt2", data_dir=tmp, out_dir=out / name, vocab_size=50304, n_layer=12,
                        n_head=12, n_embd=768, block_size=1024, batch_size=16, dtype="bfloat16", compile=True,
                        fused_linear_loss=fused, activation_checkpointing=checkpointing, learning_rate=6e-4, weight_decay=0.1, beta2=0.95, warmup_iters=10,
                        lr_decay_iters=1000)
            if cfg.smoke:
                keys.update(device="cpu", dtype="float32", compile=False, n_layer=1, n_head=2, n_embd=32, block_size=64,
                            batch_size=2)
            argv = [f"--{k}={v}" for k, v in keys.items()]
            run = build_run(load_config(argv), metrics=False, verbose=False)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            ms, losses = _time_steps(Trainer(run), warmup=3, steps=cfg.gpt2_steps)
            run.loader.close()
            median = statistics.median(ms)
            tokens_per_s = run.tokens_per_iter / (median / 1e3)
            variants[name] = {
                "ms_per_iter": median, "tokens_per_s": tokens_per_s,
                "mfu": MFU.for_run(run.cfg.model, run.device, run.dtype, 1, announce=lambda _: None).of(tokens_per_s),
                "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                "loss_first": losses[0], "loss_last": losses[-1],
            }
            del run
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return {"variants": variants}


def stage_distributed(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    n = cfg.dist_iters
    common = _shrink(["configs/shakespeare_char.yaml", f"--data_dir={cfg.data_dir}", f"--max_iters={n}",
                      f"--lr_decay_iters={max(n, 101)}", f"--eval_interval={n}", "--eval_iters=4", "--log_interval=1",
                      "--dropout=0.0"] + ([] if cfg.smoke else ["--dtype=bfloat16"]), cfg.smoke)
    bin_dir = Path(sys.executable).parent
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    runs: dict[str, list[str]] = {
        "single": [sys.executable, "launch/train.py"],
        "ddp": torchrun + ["launch/train.py", "--strategy=ddp"],
        "zero2": torchrun + ["launch/train.py", "--strategy=deepspeed", "--zero_stage=2"],
        "fsdp": torchrun + ["launch/train.py", "--strategy=fsdp"],
    }
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"} if cfg.smoke else {}
    losses, results = {}, {}
    for name in cfg.dist_runs.split(","):
        cmd = runs[name]
        run_dir = out / f"dist-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        path = f"{bin_dir}:{os.environ.get('PATH', '')}"  # the deepspeed launcher's helpers beside this python
        code = _run_logged(cmd + common + [f"--out_dir={run_dir}"], out / f"dist-{name}.log", env={"PATH": path, **env})
        metrics = run_dir / "metrics.jsonl"
        if code != 0 or not metrics.is_file():
            results[name] = {"exit_code": code, "log": str(out / f"dist-{name}.log")}
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        losses[name] = {r["iter"]: r["loss"] for r in records if r["kind"] == "train"}
        results[name] = {"exit_code": 0, "ms_per_iter": statistics.median(r["dt_ms"] for r in records
                                                                          if r["kind"] == "train" and r["iter"] > 2)}
    for name in DIST_RUNS[1:]:
        if name in losses and "single" in losses:
            worst = max(abs(losses[name][i] - losses["single"][i]) for i in losses["single"])
            results[name]["max_loss_diff"] = worst
            results[name]["within_tol"] = worst <= cfg.dist_tol
    failed = [k for k, v in results.items() if v.get("exit_code") != 0 or v.get("within_tol") is False]
    if failed:
        raise RuntimeError(f"distributed runs failed or disagreed: {failed} (see {out}/dist-*.log)")
    return results


STAGE_FNS: dict[str, Callable[[GpuCheckConfig, Path], dict[str, Any]]] = {
    "tests": stage_tests, "kernels": stage_kernels, "shakespeare": stage_shakespeare, "gpt2": stage_gpt2,
    "distributed": stage_distributed,
}


# -- report ---------------------------------------------------------------------------------------------
def markdown(stages: list[Stage], machine: dict[str, Any]) -> str:
    lines = [f"GPU check on {machine['device']} (torch {machine['torch']}, triton {machine['triton']}, "
             f"CUDA {machine['cuda']}), {sum(s.seconds for s in stages):.0f} s in all", "",
             "| stage | status | seconds | note |", "| --- | --- | ---: | --- |"]
    lines += [f"| {s.name} | {'ok' if s.ok else 'FAILED'} | {s.seconds:.0f} | {s.note} |" for s in stages]
    by = {s.name: s for s in stages}
    if "shakespeare" in by and by["shakespeare"].ok:
        lines += ["", "shakespeare_char (6x6x384, block 256, batch 64):", "",
                  "| variant | ms/iter | tokens/s | MFU | eval s | projected 5000 iters s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, v in by["shakespeare"].results["variants"].items():
            lines.append(f"| {name} | {v['ms_per_iter']:.2f} | {v['tokens_per_s']:,.0f} | {v['mfu']:.1%} | "
                         f"{v['eval_s']:.2f} | {v['projected_5000_s']:.1f} |")
    if "gpt2" in by and by["gpt2"].ok:
        lines += ["", "GPT-2 124M shape (block 1024, batch 16, vocab 50304, bf16, compiled):", "",
                  "| variant | ms/iter | tokens/s | MFU | peak MiB |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, v in by["gpt2"].results["variants"].items():
            peak = "n/a" if v["peak_mib"] is None else f"{v['peak_mib']:,.0f}"
            lines.append(f"| {name} | {v['ms_per_iter']:.1f} | {v['tokens_per_s']:,.0f} | {v['mfu']:.1%} | {peak} |")
    if "distributed" in by and by["distributed"].ok:
        lines += ["", "| run | ms/iter | largest loss difference from one process |", "| --- | ---: | ---: |"]
        for name, v in by["distributed"].results.items():
            diff = v.get("max_loss_diff")
            lines.append(f"| {name} | {v['ms_per_iter']:.2f} | {'-' if diff is None else f'{diff:.2e}'} |")
    if "kernels" in by and by["kernels"].ok and "table" in by["kernels"].results:
        lines += ["", by["kernels"].results["table"]]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda}


def main(argv: list[str]) -> None:
    cfg = parse_args(GpuCheckConfig, argv, USAGE)
    wanted = [s for s in cfg.stages.split(",") if s]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise GPTError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}.")
    runs = [r for r in cfg.dist_runs.split(",") if r]
    if "single" not in runs or not set(runs) <= set(DIST_RUNS):
        raise GPTError(f"--dist_runs={cfg.dist_runs!r}: name runs from {', '.join(DIST_RUNS)}, single among them.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.smoke and not torch.cuda.is_available():
        print("no CUDA GPU is visible: the GPU check measures nothing here (use --smoke=True to check the script)")
    info = machine()
    stages: list[Stage] = []
    for name in wanted:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results = STAGE_FNS[name](cfg, out)
            stage = Stage(name, True, time.perf_counter() - t0, results, str(results.get("skipped", "")))
        except Exception as err:  # one failing stage must not hide the others' numbers
            (out / f"{name}.error.txt").write_text(traceback.format_exc())
            stage = Stage(name, False, time.perf_counter() - t0, {}, f"{type(err).__name__}: {str(err)[:200]}")
        stages.append(stage)
        print(f"   {'ok' if stage.ok else 'FAILED'} in {stage.seconds:.0f} s {stage.note}", flush=True)
        (out / "gpu-check.json").write_text(json.dumps({"machine": info, "config": dataclasses.asdict(cfg),
                                                        "stages": [dataclasses.asdict(s) for s in stages]}, indent=1))
    report = markdown(stages, info)
    (out / "gpu-check.md").write_text(report)
    print("\n" + report)
    if not all(s.ok for s in stages):
        raise SystemExit(1)


if __name__ == "__main__":
    from gpt.cli import run_main
    run_main(main)
