"""Helpers to start, watch and kill real training processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tests.conftest import REPO, script_env


def env() -> dict[str, str]:
    # the same threads in every run: the same float order
    return script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS="1")


def start(args: list[str], preexec: Optional[Callable[[], None]] = None, cmd: Optional[list[str]] = None,
          log: Optional[Path] = None) -> subprocess.Popen:
    """Start a run; with `log`, its output goes to that file (nobody has to drain a pipe while we poll)."""
    sink = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(cmd or [sys.executable, str(REPO / "launch/train.py"), *args], cwd=REPO, env=env(),
                            stdout=sink, stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True,
                            preexec_fn=preexec)


def train(args: list[str], **kw) -> subprocess.CompletedProcess:
    proc = start(args, **kw)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def train_losses(out_dir: Path) -> dict[int, float]:
    path = Path(out_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["iter"]: r["loss"] for r in records if r["kind"] == "train"}


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
