"""launch/slurm_multinode.sbatch under a real Slurm: 2 CPU ranks train with DDP, and the job requeued resumes.

Runs inside `make test-slurm`, whose tests/slurm/cluster.sh starts a private single-node Slurm
and sets SLURM_CONF; everywhere else it skips.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from gpt.checkpoint import load_checkpoint
from tests.conftest import REPO
from tests.distributed.launch import free_port

pytestmark = pytest.mark.skipif(os.environ.get("GPT_TEST_SLURM") != "1",
                                reason="needs the single-node Slurm that `make test-slurm` starts")

ITERS = 30


def scontrol_job(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait(condition, what: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def trained_iters(out: Path) -> list[int]:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [r["iter"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_two_cpu_ranks_train_under_slurm_and_the_requeued_job_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    # the CPU config as it is (gradient_accumulation_steps=1): the script must make it fit 2 ranks by itself
    submit = ["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count()}",
              "--time=10", f"--output={tmp_path}/slurm-%j.out", "--open-mode=append",
              f"--export=ALL,GPUS_PER_NODE=2,CONFIG=configs/shakespeare_char_cpu.yaml,PORT={free_port()}",
              "launch/slurm_multinode.sbatch", f"--out_dir={out}", f"--max_iters={ITERS}", f"--lr_decay_iters={ITERS}",
              "--eval_interval=10", "--eval_iters=2", "--log_interval=1", "--warmup_iters=5",
              "--always_save_checkpoint=True"]
    job = subprocess.run(submit, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job}.out"
    # requeued (as on preemption) after its first checkpoint, mid-way between two
    wait(lambda: (out / "ckpt.pt").exists() and len(trained_iters(out)) > 13, "the first checkpoint")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait(lambda: scontrol_job(job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), "the job's end")
    text = log.read_text()
    assert scontrol_job(job)["JobState"] == "COMPLETED", text[-3000:]
    assert int(scontrol_job(job)["Restarts"]) == 1
    assert "passing --gradient_accumulation_steps=2" in text  # 1 is not a multiple of 2 ranks: rounded up
    stopped = int(re.search(r"stopping at iter (\d+) \(SIGTERM\)", text).group(1))  # saved on its way out
    assert re.search(rf"resuming from {re.escape(str(out))} at iter {stopped} ", text), text[-3000:]
    state = load_checkpoint(out)
    assert (state["iter_num"], state["world_size"]) == (ITERS, 2)
    assert state["config"]["gradient_accumulation_steps"] == 2
    assert sorted(trained_iters(out)) == list(range(ITERS))  # every step once: none lost, none repeated
