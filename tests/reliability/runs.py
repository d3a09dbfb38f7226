"""Helpers to start, watch and kill real training processes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from tests.conftest import REPO, script_env


def env(**changes: str) -> dict[str, str]:
    # as many threads as this process, whose in-process reference runs these are compared with bit for bit
    return script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS=str(torch.get_num_threads()),
                      **changes)


def start(args: list[str], preexec: Optional[Callable[[], None]] = None, env_changes: Optional[dict[str, str]] = None
          ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "launch/train.py"), *args], cwd=REPO, env=env(**(env_changes or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def train(args: list[str], preexec: Optional[Callable[[], None]] = None, env: Optional[dict[str, str]] = None
          ) -> subprocess.CompletedProcess:
    proc = start(args, preexec, env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120, poll: float = 0.002) -> bool:
    """Poll until `condition()` holds; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("condition not reached")


def logged_iters(out_dir: Path) -> int:
    try:
        return (Path(out_dir) / "metrics.jsonl").read_text().count('"kind": "train"')
    except FileNotFoundError:
        return 0


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.communicate(timeout=120)
