"""Helpers to run real multi-process jobs the way users start them (torchrun, the deepspeed launcher).

Jobs run tests/distributed/worker.py (launch/train.py plus probes) unless told otherwise, and every
job's losses are held to the one-process run of the same config (`reference_losses` in
tests/conftest.py). DDP and ZeRO on 2 gloo ranks measured at most 5e-7 from it over 10-30 steps.
"""
from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpt.config import load_config
from gpt.optim import lr_at
from tests.conftest import REPO, script_env, tiny_argv

VENV_BIN = Path(sys.executable).parent
WORKER = "tests/distributed/worker.py"
# the config every distributed test trains (a 30-step schedule; jobs may stop earlier), with clipping
# active at every step (gradient norms here are 0.9-1.2), so a strategy that does not clip drifts off
DIST = dict(dropout=0.0, gradient_accumulation_steps=4, max_iters=30, lr_decay_iters=30, warmup_iters=2,
            eval_interval=5, grad_clip=0.5)
LOSS_TOL = 1e-5
LR_CHECKED = {1, 9}  # iterations whose lr the tests check on every strategy: inside the warmup, a quarter into the decay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**changes: str | None) -> dict[str, str]:
    # two ranks on two cores: one thread each, or they spin against each other
    return script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
                      **changes)


def run(cmd: list[str], timeout: float = 300, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=job_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


def torchrun(args: list[str], nproc: int = 2, script: str = WORKER, launcher_args: tuple[str, ...] = (),
             env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *launcher_args,
                str(REPO / script), *args], env=env)


def deepspeed(args: list[str], nproc: int = 2, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("deepspeed", path=str(VENV_BIN)) or "deepspeed"
    return run([exe, f"--num_gpus={nproc}", f"--master_port={free_port()}", str(REPO / WORKER), *args], env=env)


def one_process(args: list[str], env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """The worker as `python launch/train.py` runs: one process, no launcher."""
    return run([sys.executable, str(REPO / WORKER), *args], env=env)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def same(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def assert_close(got: dict[int, float], expected: dict[int, float], tol: float = LOSS_TOL) -> float:
    """The same iterations, each loss within tol (a NaN where the reference has one); returns the largest difference."""
    assert sorted(got) == sorted(expected)
    bad = {i: (got[i], expected[i]) for i in expected if not same(got[i], expected[i], tol)}
    assert not bad, f"iterations off by more than {tol}: {bad}"
    return max((abs(got[i] - expected[i]) for i in expected if not math.isnan(expected[i])), default=0.0)


def until(values: dict[int, float], last: int) -> dict[int, float]:
    """The iterations up to `last`: what a job stopped early shares with a longer reference run."""
    return {i: v for i, v in values.items() if i <= last}


def fork(src: Path, dst: Path, iter_num: int) -> Path:
    """A new out_dir whose latest checkpoint is src's folder entry of `iter_num`, with src's metrics (the
    resumed run rewinds them to iter_num): resuming it repeats src's steps from there."""
    from gpt.checkpoint import entry_name

    dst.mkdir()
    shutil.copytree(src / entry_name(iter_num), dst / entry_name(iter_num))
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")
    (dst / "latest").write_text(entry_name(iter_num))
    return dst


def rank_records(out_dir: Path, world_size: int) -> list[dict[str, Any]]:
    """Each rank's steps_rank<R>.json, after asserting that exactly `world_size` ranks ran the job."""
    files = sorted(Path(out_dir).glob("steps_rank*.json"))
    assert [f.name for f in files] == [f"steps_rank{r}.json" for r in range(world_size)]
    records = [json.loads(f.read_text()) for f in files]
    assert all(r["world_size"] == world_size for r in records)
    for r in records:
        r["steps"] = {int(i): s for i, s in r["steps"].items()}
    return records


def assert_scheduled_lr(records: list[dict[str, Any]], logged_lr: dict[int, float], overrides: dict) -> None:
    """On every rank each applied step used lr_at(it) in every param group, and the log shows that lr."""
    optim = load_config(tiny_argv(Path("unused"), Path("unused"), **overrides)).optim  # the job's own schedule
    for r in records:
        for it, step in r["steps"].items():
            if step["applied"]:
                assert step["lr"] == [lr_at(it, optim)] * len(step["lr"]), (it, step["lr"])
    applied = {it for it, s in records[0]["steps"].items() if s["applied"]}
    assert {it: logged_lr[it] for it in applied} == {it: records[0]["steps"][it]["lr"][0] for it in applied}
