"""Compile every Triton kernel we launch for real GPUs, without one, and check that each fits.

    python -m kernels.gpu_compile [--targets=sm_80,sm_89,sm_90] [--subset] [--jobs=N]

Triton's interpreter (our CPU tests) accepts programs that a GPU compile rejects or runs
badly: tl.dot shape minimums, shared memory over the per-block limit, conversions the
backend lacks, register spills. This runs triton's whole pipeline down to a cubin for each
target (the ptxas inside the triton wheel; no GPU, no CUDA install), for every launch in
kernels/gpu_matrix.py, and prints a markdown table: kernel, config, target, shared memory
against the target's limit, registers, spills, compile seconds, status.

It fails (exit 1) on a compile error, on shared memory over the target's limit, and on shared
memory over what the launcher's table declares for those tiles (the figure the launchers and
kernels/gpu_support.py pick tiles by). Register spills do not fail it: a spilling kernel is
correct and slower, so they are reported, counted in the summary, and the tables avoid them
where a configuration without them compiles. Compiles land in triton's cache (TRITON_CACHE_DIR),
and so do the registers and spills read from ptxas's log, so a rerun takes seconds.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import resource
import sys
import time
import warnings
from dataclasses import dataclass

from gpt.errors import GPTError
from kernels import gpu_matrix, gpu_support
from kernels.gpu_matrix import Job
from kernels.gpu_support import KIB, Target
from kernels.runtime import INTERPRETER

_RESOURCES = "gpu_compile_resources.json"  # our file in a kernel's triton cache directory


@dataclass(frozen=True)
class Result:
    """What one compile gave: shared bytes, registers and spill bytes a thread, seconds, or the error."""
    job: Job
    shared: int = 0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    seconds: float = 0.0      # wall
    cpu_seconds: float = 0.0  # this process and its ptxas: what the compile costs whatever else the box runs
    error: str = ""

    def problems(self) -> list[str]:
        """Why this compile fails the check (empty when it passes)."""
        if self.error:
            return [f"compile error: {self.error.strip().splitlines()[-1][:160]}"]
        found = []
        limit = self.job.target.max_shared
        if self.shared > limit:
            found.append(f"{self.shared / KIB:.0f} KiB of shared memory > {self.job.target.name}'s {limit // KIB} KiB")
        if self.shared > self.job.shared_bound:
            found.append(f"{self.shared / KIB:.0f} KiB of shared memory > the {self.job.shared_bound // KIB} KiB "
                         "the launcher's table declares for these tiles (raise its shared_kib)")
        return found

    def status(self) -> str:
        problems = self.problems()
        if problems:
            return "FAIL: " + "; ".join(problems)
        return "ok, spills" if self.spill_stores or self.spill_loads else "ok"


def _parse_ptxas(log: str) -> dict[str, int] | None:
    # ptxas -v: "Used 168 registers, used 1 barriers, ..." and "0 bytes stack frame, 8 bytes spill stores,
    # 8 bytes spill loads"
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spills:
        return None
    return {"registers": int(regs.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2))}


def _compile(job: Job, force: bool = False) -> tuple[object, str]:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(job.module), job.kernel)
    src = ASTSource(fn=kernel, signature=dict(job.signature), constexprs=dict(job.constexprs),
                    attrs={(i,): [["tt.divisibility", 16]] for i in job.aligned})
    target = GPUTarget("cuda", job.target.capability[0] * 10 + job.target.capability[1], 32)
    out = io.StringIO()
    # triton runs ptxas with -v and prints its log when asked: registers and spills without a second ptxas
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(out):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = force
        compiled = triton.compile(src, target=target, options=dict(job.options))
    return compiled, out.getvalue()


def compile_job(job: Job) -> Result:
    """Compile one job (or take it from triton's cache) and read its shared memory, registers and spills."""
    from triton.runtime.cache import get_cache_manager

    start, start_cpu = time.perf_counter(), _cpu_seconds()
    try:
        compiled, log = _compile(job)
        resources = _parse_ptxas(log)
        cache = get_cache_manager(compiled.hash)
        if resources is None:  # a cache hit: ptxas did not run this time
            stored = cache.get_file(_RESOURCES)
            if stored is not None:
                with open(stored) as f:
                    resources = json.load(f)
            else:  # compiled before, by a launch rather than this check: compile again for the log
                compiled, log = _compile(job, force=True)
                resources = _parse_ptxas(log)
        if resources is None:
            raise RuntimeError(f"no registers in ptxas's log:\n{log[-2000:]}")
        cache.put(json.dumps(resources), _RESOURCES, binary=False)
        return Result(job, shared=compiled.metadata.shared, seconds=time.perf_counter() - start,
                      cpu_seconds=_cpu_seconds() - start_cpu, **resources)
    except Exception as e:  # the check reports every failure in its table rather than stopping at the first
        return Result(job, seconds=time.perf_counter() - start, cpu_seconds=_cpu_seconds() - start_cpu,
                      error=f"{type(e).__name__}: {e}")


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _cost(job: Job) -> int:
    # longest first, so that the workers finish together: an attention backward with dropout takes 10-25
    # CPU-seconds, a LayerNorm or cross-entropy kernel about one
    dropout = bool(dict(job.constexprs).get("DROPOUT"))
    return (job.kernel == "_bwd_kernel") * 4 + (job.kernel == "_fwd_kernel") * 2 + dropout


def compile_all(jobs: list[Job], workers: int) -> list[Result]:
    """Compile the jobs in `workers` processes; results in the jobs' order."""
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
    results: list[Result | None] = [None] * len(jobs)

    def done(i: int, result: Result) -> None:
        results[i] = result
        count = sum(r is not None for r in results)
        print(f"[{count}/{len(jobs)}] {_KERNEL_NAMES.get(result.job.kernel, result.job.kernel)}, "
              f"{result.job.problem}, {result.job.target.name}: {result.status()} "
              f"({result.seconds:.1f} s, {result.cpu_seconds:.1f} CPU-s)",
              file=sys.stderr, flush=True)

    if workers <= 1:
        for i in order:
            done(i, compile_job(jobs[i]))
        return results
    # fork: the workers inherit the imported kernels (a Job names its kernel by module and name)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(compile_job, jobs[i]): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            done(futures[future], future.result())
    return results


_KERNEL_NAMES = {"_fwd_kernel": "flash forward", "_bwd_kernel": "flash backward", "_delta_kernel": "flash delta",
                 "_mask_kernel": "dropout mask", "_ln_fwd_kernel": "layernorm forward",
                 "_ln_bwd_kernel": "layernorm backward", "_ce_kernel": "cross-entropy",
                 "_rms_fwd_kernel": "rmsnorm forward", "_rms_bwd_kernel": "rmsnorm backward", "_rope_kernel": "rope"}


def table(results: list[Result]) -> str:
    """The markdown table: one row per compile."""
    rows = ["| kernel | config | case | target | shared KiB / limit | registers | spills (bytes st/ld) "
            "| compile s (CPU) | status |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        j = r.job
        spills = "-" if r.error else f"{r.spill_stores}/{r.spill_loads}"
        shared = "-" if r.error else f"{r.shared / KIB:.1f} / {j.target.max_shared // KIB}"
        rows.append(f"| {_KERNEL_NAMES.get(j.kernel, j.kernel)} | {j.config()} | {j.problem} | {j.target.name} "
                    f"| {shared} | {r.registers or '-'} | {spills} | {r.seconds:.1f} ({r.cpu_seconds:.1f}) "
                    f"| {r.status()} |")
    return "\n".join(rows)


def summary(results: list[Result], targets: tuple[Target, ...], wall: float) -> str:
    """A markdown table per target and kernel: compiles, failures, the most shared memory and registers,
    how many spill and the most they spill; then the totals."""
    rows = ["| target | kernel | compiles | failed | max shared KiB / limit | max registers | spilling "
            "| max spill stores, bytes | compile CPU-s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in targets:
        for kernel, name in _KERNEL_NAMES.items():
            mine = [r for r in results if r.job.target == t and r.job.kernel == kernel]
            if not mine:
                continue
            ok = [r for r in mine if not r.error]
            spilling = [r for r in ok if r.spill_stores or r.spill_loads]
            rows.append(f"| {t.name} | {name} | {len(mine)} | {sum(bool(r.problems()) for r in mine)} "
                        f"| {max((r.shared for r in ok), default=0) / KIB:.1f} / {t.max_shared // KIB} "
                        f"| {max((r.registers for r in ok), default=0)} | {len(spilling)} "
                        f"| {max((r.spill_stores for r in spilling), default=0)} "
                        f"| {sum(r.cpu_seconds for r in mine):.0f} |")
    failed = sum(bool(r.problems()) for r in results)
    cpu = sum(r.cpu_seconds for r in results)
    rows.append(f"\n{len(results)} compiles for {', '.join(t.name for t in targets)}: {failed} failed, "
                f"{wall:.0f} s wall, {cpu:.0f} CPU-seconds of compiling")
    return "\n".join(rows)


def parse_targets(text: str) -> tuple[Target, ...]:
    """'sm_80,sm_90' -> the checked targets of those names; GPTError for one that is not checked."""
    by_name = {t.name: t for t in gpu_support.CHECKED_TARGETS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise GPTError(f"--targets={text}: the check knows {', '.join(by_name)}; name one or more, comma-separated.")
    return tuple(by_name[n] for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.gpu_compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", help=f"comma-separated; default: {', '.join(gpu_support.TARGET_NAMES)}, "
                                          f"or {', '.join(gpu_matrix.SUBSET_TARGETS)} with --subset")
    parser.add_argument("--subset", action="store_true",
                        help="one configuration per kernel (what make test compiles)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (processes)")
    args = parser.parse_args(argv)
    if INTERPRETER:
        raise GPTError("kernels.gpu_compile compiles for real GPUs, but TRITON_INTERPRET=1 makes @triton.jit "
                       "build interpreter functions: unset TRITON_INTERPRET and run it again.")
    default = gpu_matrix.SUBSET_TARGETS if args.subset else gpu_support.TARGET_NAMES
    targets = parse_targets(args.targets or ",".join(default))
    start = time.perf_counter()
    cases = gpu_matrix.subset(targets) if args.subset else gpu_matrix.full_matrix(targets)
    jobs = gpu_matrix.unique_jobs(cases)
    results = compile_all(jobs, max(1, args.jobs))
    print(table(results))
    print()
    print(summary(results, targets, time.perf_counter() - start))
    failed = [r for r in results if r.problems()]
    for r in failed:
        if r.error:
            print(f"\n{r.job.kernel} ({r.job.problem}, {r.job.target.name}):\n{r.error[-3000:]}", file=sys.stderr)
    if failed:
        print(f"\n{len(failed)} of {len(results)} compiles FAILED", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")  # triton 3.9's notice, every run
    from gpt.cli import run_main
    run_main(lambda argv: sys.exit(main(argv)))
