"""Running launch/train.py as a real process, with limits set inside it before it starts."""
from __future__ import annotations

import subprocess
import sys
from typing import Callable, Optional

from tests.conftest import REPO, script_env


def train(args: list[str], preexec: Optional[Callable[[], None]] = None) -> subprocess.CompletedProcess:
    """`python launch/train.py args`, on one thread like the tests' in-process runs; `preexec` runs in the child
    first (resource limits)."""
    return subprocess.run([sys.executable, str(REPO / "launch/train.py"), *args], cwd=REPO,
                          env=script_env(RANK=None, LOCAL_RANK=None, WORLD_SIZE=None, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300, preexec_fn=preexec)
