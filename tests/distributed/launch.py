"""Helpers to run real multi-process jobs the way users start them (torchrun, the deepspeed launcher)."""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch

from tests.conftest import REPO, script_env, tiny_argv

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**changes: str | None) -> dict[str, str]:
    # two ranks on two cores: one thread each, or they spin against each other
    return script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **changes)


def run(cmd: list[str], timeout: float = 300, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=job_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


def torchrun(args: list[str], nproc: int = 2, script: str = "launch/train.py",
             env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(REPO / script), *args],
               env=env)


def deepspeed(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    exe = shutil.which("deepspeed", path=str(VENV_BIN)) or "deepspeed"
    return run([exe, f"--num_gpus={nproc}", f"--master_port={free_port()}", str(REPO / "launch/train.py"), *args])


def losses(out_dir: Path, kind: str = "train", key: str = "loss") -> dict[int, float]:
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["iter"]: r[key] for r in map(json.loads, lines) if r["kind"] == kind}


def assert_close(got: dict[int, float], expected: dict[int, float], tol: float) -> float:
    """Same iterations, each within tol; returns the largest difference."""
    assert sorted(got) == sorted(expected)
    worst = max(abs(got[i] - expected[i]) for i in expected)
    assert worst <= tol, (worst, got, expected)
    return worst


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train in this process on one thread, as each rank of a job does (job_env). On the shared 2-core box, torch's
    default two threads spin against the other processes: a 20-iteration reference run took 32 s of CPU and 93 s
    of wall time on two threads, 5 s and 16 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_process_run(data_dir: Path, out_dir: Path, overrides: dict) -> Path:
    """The one-process run a distributed run must match: same config, in this process."""
    from gpt.build import build_run
    from gpt.config import load_config
    from gpt.trainer import Trainer

    with one_thread():
        Trainer(build_run(load_config(tiny_argv(data_dir, out_dir, **overrides)))).run()
    return out_dir


_REFERENCE_RUNS: dict[tuple, Path] = {}


def reference_run(data_dir: Path, tmp_path_factory, overrides: dict) -> Path:
    """single_process_run for `overrides`, run once per test session and shared by every module that asks."""
    key = (str(data_dir), tuple(sorted((k, str(v)) for k, v in overrides.items())))
    if key not in _REFERENCE_RUNS:
        _REFERENCE_RUNS[key] = single_process_run(data_dir, tmp_path_factory.mktemp("reference"), overrides)
    return _REFERENCE_RUNS[key]
