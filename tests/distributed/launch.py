"""Helpers to run real multi-process jobs the way users start them (torchrun, the deepspeed launcher)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, script_env, tiny_argv

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env() -> dict[str, str]:
    # two ranks on two cores: one thread each, or they spin against each other
    return script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout)


def torchrun(args: list[str], nproc: int = 2, script: str = "launch/train.py") -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(REPO / script), *args])


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


def single_process_run(data_dir: Path, out_dir: Path, overrides: dict) -> Path:
    """The one-process run a distributed run must match: same config, in this process."""
    from gpt.build import build_run
    from gpt.config import load_config
    from gpt.trainer import Trainer

    Trainer(build_run(load_config(tiny_argv(data_dir, out_dir, **overrides)))).run()
    return out_dir
