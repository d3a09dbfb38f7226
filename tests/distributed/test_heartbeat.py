"""A rank that hangs ends the job within --dist_timeout, naming itself; torchrun then restarts and resumes it.

The SIGSTOP test stops a rank of a real training run (launch/train.py under torchrun, gloo,
2 CPU processes); the stuck-read test runs tests/distributed/heartbeat_worker.py (a fake
training loop with the heartbeat) whose data read of one rank never returns.
"""
from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from gpt.distributed import DistEnv
from gpt.heartbeat import HANG_EXIT_CODE, Heartbeat
from tests.conftest import REPO, tiny_argv
from tests.distributed.launch import VENV_BIN, job_env

WORKER = str(REPO / "tests/distributed/heartbeat_worker.py")


def test_one_process_has_no_heartbeat_thread():
    heartbeat = Heartbeat.start(DistEnv(), 1.0)
    heartbeat.beat(0)
    heartbeat.stop()
    assert not heartbeat._threads and not [t for t in threading.enumerate() if t.name.startswith("gpt-heartbeat")]


def in_process_heartbeat(rank: int, store: dist.Store, ended: dict[int, str]) -> Heartbeat:
    """Rank `rank` of 2 on `store`, whose verdicts land in `ended` instead of ending pytest with os._exit."""
    heartbeat = Heartbeat(DistEnv(rank=rank, world_size=2), timeout_s=1.0, store=store)
    heartbeat._exit = lambda message: (ended.setdefault(rank, message), heartbeat._stopping.set())
    heartbeat._begin()
    return heartbeat


def client(port: int) -> dist.Store:
    return dist.PrefixStore("test", dist.TCPStore("127.0.0.1", port, None, False, datetime.timedelta(seconds=5),
                                                   wait_for_workers=False))


def test_a_rank_that_stopped_publishing_is_named_by_the_other_through_the_store():
    """Two heartbeats in this process over a real TCPStore; rank 1's threads end silently, as under SIGSTOP."""
    server = dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=5), wait_for_workers=False)
    ended: dict[int, str] = {}
    ranks = [in_process_heartbeat(rank, client(server.port), ended) for rank in (0, 1)]
    try:
        for step in range(3):
            time.sleep(0.05)
            for heartbeat in ranks:
                heartbeat.beat(step)
        last_beat = time.monotonic()
        time.sleep(0.05)  # the thread publishes step 2 as soon as it is beaten: let it
        ranks[1]._publish = lambda *args, **kwargs: None  # its threads end without a word, as if stopped
        ranks[1].stop()
        while 0 not in ended and time.monotonic() - last_beat < 5.0:
            time.sleep(0.02)
        detected_s = time.monotonic() - last_beat
    finally:
        for heartbeat in ranks:
            heartbeat.stop()
    assert "rank 1 stopped responding" in ended.get(0, ""), ended
    assert "last finished step 2" in ended[0] and ended[0].startswith("error: hang detected by rank 0")
    assert 0.99 <= detected_s < 2.0, detected_s  # the timeout after rank 0's last beat, plus a few ticks of 0.1 s


class FrozenStore:
    """A store whose host is stopped: every call blocks (until the test thaws it)."""

    def __init__(self):
        self.thaw = threading.Event()

    def __getattr__(self, name):
        def blocked(*args, **kwargs):
            self.thaw.wait()
            raise ConnectionError("thawed")
        return blocked


def test_a_store_that_stops_answering_ends_the_job_once_this_rank_stalls_too():
    store, ended = FrozenStore(), {}
    heartbeat = in_process_heartbeat(1, store, ended)
    try:
        heartbeat.beat(7)
        beat_at = time.monotonic()
        while 1 not in ended and time.monotonic() - beat_at < 5.0:
            time.sleep(0.02)
        detected_s = time.monotonic() - beat_at
    finally:
        store.thaw.set()
        heartbeat.stop()
    assert "rank 1 made no progress" in ended[1] and "last finished step 7" in ended[1]
    assert "rendezvous store" in ended[1] and "has not answered" in ended[1]
    assert 0.99 <= detected_s < 1.5, detected_s


def start_job(out: Path, *flags: str, restarts: int = 0) -> subprocess.Popen:
    log = open(out / "torchrun.log", "w")
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}",
           WORKER, str(out), *flags]
    # a session of its own: whatever happens, the test can kill every process of the job, stopped ones too
    return subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_line(out: Path, pattern: str, job: subprocess.Popen, timeout: float = 60) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        match = re.search(pattern, (out / "torchrun.log").read_text())
        if match or job.poll() is not None:
            break
        time.sleep(0.02)
    assert match, f"{pattern!r} not in the log:\n" + (out / "torchrun.log").read_text()[-3000:]
    return match


def finish(job: subprocess.Popen, timeout: float = 120) -> str:
    try:
        job.wait(timeout=timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    return job.returncode


def rank_pid(agent_pid: int, rank: int) -> int:
    """The pid of the training process torchrun started as `rank`."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == agent_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under torchrun {agent_pid}")


@pytest.mark.long
def test_a_sigstopped_rank_of_a_real_run_ends_the_job_with_its_name_then_torchrun_resumes_it(tiny_data, tmp_path):
    timeout = 5.0
    out = tmp_path / "run"
    flags = tiny_argv(tiny_data, out, max_iters=40, lr_decay_iters=40, eval_interval=10, dropout=0.0,
                      gradient_accumulation_steps=2, dist_timeout=timeout, log_interval=1)
    log = open(tmp_path / "torchrun.log", "w")
    job = subprocess.Popen([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                            str(REPO / "launch/train.py"), *flags], cwd=REPO, env=job_env(), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(tmp_path, r"iter 13/40:", job)
        os.kill(rank_pid(job.pid, 1), signal.SIGSTOP)
        stopped = time.monotonic()
        message = wait_for_line(tmp_path, r"error: hang detected .*rank 1 stopped responding.*last finished step (\d+)",
                                job).group(0)
        detected_s = time.monotonic() - stopped
        wait_for_line(tmp_path, r"torchrun restarted this job: resuming from", job)
    finally:
        returncode = finish(job, timeout=240)
    text = (tmp_path / "torchrun.log").read_text()
    assert detected_s < timeout + 30, detected_s
    named = int(re.search(r"last finished step (\d+)", message).group(1))
    last_logged = max(int(i) for i in re.findall(r"iter (\d+)/40:", text.split("hang detected")[0]))
    assert abs(named - last_logged) <= 1, (named, last_logged)  # rank 0 logs a step after the gather that follows it
    assert returncode == 0, text[-3000:]
    from gpt.checkpoint import load_checkpoint
    assert load_checkpoint(out)["iter_num"] == 40
    print(f"SIGSTOP to the message: {detected_s:.1f} s (--dist_timeout={timeout:g})")


def test_a_rank_stuck_in_a_data_read_is_named_and_first_shows_as_a_straggler(tmp_path):
    timeout = 2.0
    job = start_job(tmp_path, "--steps=200", f"--dist_timeout={timeout}", "--step_s=0.02", "--slow_rank=1",
                    "--slow_x=3", "--stuck_rank=1", "--stuck_at=15")
    try:
        wait_for_line(tmp_path, r"the data read of step 15 is stuck", job)
        stuck = time.monotonic()
        wait_for_line(tmp_path, r"error: hang detected", job)
        detected_s = time.monotonic() - stuck
    finally:
        returncode = finish(job)
    log = (tmp_path / "torchrun.log").read_text()
    assert "iter 14: " in log and "iter 15: " not in log
    assert re.search(r"iter \d+: local [\d.]+ ms, slowest rank 1: [23]\.\dx median", log), log[-3000:]
    assert "rank 1 made no progress" in log and "last finished step 14" in log
    assert "main thread at distributed/heartbeat_worker.py" in log and "read_batch" in log  # where it is stuck
    assert "rank 1, named by rank " in log  # and its own full stack
    assert f"exitcode: {HANG_EXIT_CODE}" in log and returncode != 0
    assert detected_s < timeout + 30
    print(f"stuck read to the message: {detected_s:.1f} s (--dist_timeout={timeout:g})")
