"""The heartbeat: a rank that stops making progress ends the job within --dist_timeout, naming itself.

Without it, a rank that hangs without dying is noticed only when gloo's or NCCL's
collective timeout fires, and then the message says only that a collective waited.

How the trainer uses it (one process: every call is a no-op)::

    heartbeat = Heartbeat.start(denv, dist_timeout_s)  # after init_process_group, before the loop
    try:
        ...  heartbeat.beat(it)   after each optimizer step `it` (the number its log line shows)
        ...  heartbeat.beat()     at other points of progress: after each micro-batch's data, each eval
                                  batch, after the eval's logging (rank 0 redraws loss.png: the first
                                  draw took over 3 s here), before and after a checkpoint save
    finally:
        heartbeat.stop()

Every rank must beat at the same points, the same number of times: beat outside `if is_main:`
(after rank 0's extra work, not inside it). A rank with fewer beats than the others is taken
for the one they wait for.

What carries the beats: the c10d TCPStore that the launcher's env:// rendezvous created
(torchrun's agent hosts it, the first node's agent under multi-node; rank 0 hosts it under
the deepspeed launcher), through a client connection of our own, used by the heartbeat
thread only: a store call to a stopped host blocks forever, so a second thread, the
guard, which never touches the store, ends the job when neither the store nor this rank's
loop has moved for long. Keys sit under the attempt's prefix (`gpt.distributed.attempt_prefix`),
so a job that torchrun restarts never reads the dead attempt's pulses.

Who beats: the main loop, never a timer. A daemon thread publishes a `gpt.hang.Pulse`
holding both its own counter and the main loop's beat count, at every tick (a tenth of
the timeout, at most 5 s) and right after each finished step: a SIGSTOPped process
publishes nothing, a process whose main thread is stuck in a data read publishes a beat
count that no longer moves.

Who judges: a rank only reads the others' pulses once its own main loop has made no
progress for a third of the timeout (training is synchronous: when any rank stops, every
rank stops within a step), so a healthy job costs each rank one store write per step and
one write and one key check per tick, whatever the world size. After a full timeout
without progress it decides with `gpt.hang.Watch` (in its own clock: no cross-node clock
skew) and writes the verdict to the store; the first verdict wins.

Legitimately slow phases: the watch is armed only at this process's first finished step,
because the first step's length is unknowable (torch.compile); the collective timeout,
twice this one (`gpt.distributed.collective_timeout`), guards set-up and that step. After
that, no single call between two beats may take longer than the timeout: the trainer
beats during evals and around saves, and the 300 s default leaves room for any save of
the models trained here.

How the job ends: every rank reads the verdict at its next tick. The rank that wrote it
prints one paragraph on stderr (the rank, its last finished step, where its main thread
is when it still runs); a named rank that still runs prints its main thread's stack;
then every rank that can leaves with exit code HANG_EXIT_CODE. A stopped process runs
nothing and torchrun's SIGTERM waits 30 s for it before a SIGKILL, so a rank on the same
machine kills it at once (checked by pid and process start time). torchrun then ends the
job and, with --max-restarts, restarts it; the restarted ranks resume from the last
checkpoint on their own (TORCHELASTIC_RESTART_COUNT).
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from gpt.distributed import DistEnv, attempt_prefix
from gpt.errors import GPTError
from gpt.hang import Pulse, Watch

# EX_TEMPFAIL from sysexits.h: a temporary failure, worth a retry (what torchrun --max-restarts does)
HANG_EXIT_CODE = 75
MAX_TICK_S = 5.0
VERDICT_KEY = "verdict"


class Heartbeat:
    """A rank's beats, the thread that publishes them and watches the other ranks, and its guard."""

    def __init__(self, denv: DistEnv, timeout_s: float, store: Optional[dist.Store] = None):
        """Use `start`; `store` replaces the launcher's store (tests)."""
        self.rank, self.world_size, self.timeout_s = denv.rank, denv.world_size, timeout_s
        self.tick_s = min(max(timeout_s / 10, 0.05), MAX_TICK_S)
        self._store = store
        self._own_store = store is None
        now = time.monotonic()
        self._progress: tuple[int, Optional[int], float] = (0, None, now)  # beats, last finished step, when
        self._seq = 0
        self._watch = Watch(self.world_size)
        self._store_ok_at = now  # the last time the store answered
        self._resumed_at = now  # the last time this process ran again after not running at all (SIGSTOP, VM pause)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._identity = _identity()

    @classmethod
    def start(cls, denv: DistEnv, timeout_s: Optional[float], store: Optional[dist.Store] = None) -> "Heartbeat":
        """Start beating and watching; a no-op for one process or when `timeout_s` is None.

        Call after the process group exists (the launcher's store must be up), once per process.
        """
        heartbeat = cls(denv, timeout_s or 0.0, store)
        if denv.world_size > 1 and timeout_s is not None:
            if not timeout_s > 0:
                raise GPTError(f"--dist_timeout={timeout_s} must be a positive number of seconds, e.g. 300.")
            if store is None and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
                raise GPTError("the heartbeat needs MASTER_ADDR and MASTER_PORT, which torchrun and the deepspeed "
                               "launcher set: start the job with one of them.")
            heartbeat._begin()
        return heartbeat

    def _begin(self) -> None:
        # no store call ever runs on the main thread: a client of a stopped store host blocks forever (measured:
        # torch 2.13's TCPStore ignores its timeout for set/check/get once connected)
        self._threads = [threading.Thread(target=self._run, name="gpt-heartbeat", daemon=True),
                         threading.Thread(target=self._guard, name="gpt-heartbeat-guard", daemon=True)]
        for thread in self._threads:
            thread.start()

    def beat(self, step: Optional[int] = None) -> None:
        """The main loop made progress; `step` is the optimizer step it just finished, if it finished one.

        Costs one tuple assignment: call it as often as there is progress to report.
        """
        beats, last, _ = self._progress
        self._progress = (beats + 1, last if step is None else step, time.monotonic())
        if step is not None:
            # published at once by the thread, so that a rank stopped between two ticks is reported with the
            # step it really finished (at a tick's lag, a stopped rank read 26 while it had finished 30)
            self._wake.set()

    def stop(self) -> None:
        """Leave on purpose: the other ranks stop judging this one. Safe to call twice; never blocks for long."""
        if not self._threads or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:  # the heartbeat thread says goodbye to the store on its way out
            thread.join(timeout=self.tick_s + 1.0)

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _stalled_s(self, now: float, since: float) -> float:
        """Seconds since `since`, not counting a time when this process did not run at all."""
        return now - max(since, self._resumed_at)

    # -- the heartbeat thread: publishes, reads, judges --------------------------------------------------
    def _run(self) -> None:
        next_tick = 0.0  # the first pass publishes at once: the other ranks see this one before its first tick
        while True:
            woken = self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            try:
                if self._stopping.is_set():
                    self._publish(done=True)  # the other ranks stop judging this one
                    return
                if self._store is None:
                    self._connect()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    self._tick()
                elif woken:
                    self._publish()
                self._store_ok_at = time.monotonic()
            except Exception:  # the store did not answer: connect again at the next tick; the guard judges
                if self._stopping.is_set():
                    return
                next_tick = time.monotonic() + self.tick_s
                if self._own_store:
                    self._store = None

    def _tick(self) -> None:
        now = time.monotonic()
        beats, step, beat_at = self._progress
        stalled = self._stalled_s(now, beat_at)
        watching = step is not None and stalled >= self.timeout_s / 3
        self._publish(where=_main_thread_where() if watching else "")
        if self._store.check([VERDICT_KEY]):
            self._end(json.loads(self._store.get(VERDICT_KEY)))
        if not watching:
            self._watch.reset()
            return
        self._watch.update(now, self._read_pulses())
        verdict = self._watch.verdict(now, quiet_s=self.timeout_s / 2) if stalled >= self.timeout_s else None
        if verdict is not None and not self._stopping.is_set():
            text = verdict.explain(self.timeout_s, stalled, self.rank)
            # a stopped process ignores torchrun's SIGTERM for 30 s: whoever shares its machine kills it
            kill = [_kill_target(p) for p in verdict.pulses.values() if p] if verdict.kind == "silent" else []
            mine = json.dumps({"writer": self.rank, "text": text, "ranks": list(verdict.ranks), "kill": kill})
            self._end(json.loads(self._store.compare_set(VERDICT_KEY, "", mine)))

    # -- the guard thread: never touches the store, so a store that hangs cannot hang it ---------------
    def _guard(self) -> None:
        """End the job when neither this rank's loop nor the store has moved for long; notice suspensions."""
        last = time.monotonic()
        while not self._stopping.wait(self.tick_s):
            now = time.monotonic()
            if now - last > self.tick_s + max(1.0, 2 * self.tick_s):
                # this process did not run (SIGSTOP then SIGCONT, Ctrl-Z then fg, a paused VM): that time is
                # nobody's fault and must not count as a hang once it runs again
                self._resumed_at = now
            last = now
            _, step, beat_at = self._progress
            stalled, silent = self._stalled_s(now, beat_at), self._stalled_s(now, self._store_ok_at)
            if step is not None and stalled >= self.timeout_s and silent >= self.timeout_s / 2:
                host = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                owner = ("torchrun's agent on the first node" if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                         else "rank 0")
                self._exit(f"error: hang detected by rank {self.rank}'s heartbeat (--dist_timeout={self.timeout_s:g}): "
                           f"rank {self.rank} made no progress for {stalled:.1f} s (last finished step {step}) and the "
                           f"rendezvous store at {host}, hosted by {owner}, has not answered for {silent:.1f} s: that "
                           "process is stopped or gone. Ending the job: torchrun --max-restarts, or a requeued Slurm "
                           "job with --init_from=auto, resumes it from the last checkpoint.")

    # -- the store -----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        env = os.environ
        client = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), None, False,
                               datetime.timedelta(seconds=min(max(self.timeout_s / 3, 1.0), 30.0)),
                               wait_for_workers=False)
        self._store = dist.PrefixStore(f"{attempt_prefix()}/heartbeat", client)

    def _publish(self, where: str = "", done: bool = False) -> None:
        self._seq += 1
        beats, step, _ = self._progress
        host, pid, started = self._identity
        pulse = Pulse(self._seq, beats, step, where, done, host, pid, started)
        self._store.set(f"rank{self.rank}", pulse.to_json())

    def _read_pulses(self) -> dict[int, Optional[Pulse]]:
        keys = [f"rank{r}" for r in range(self.world_size)]
        if self._store.check(keys):  # multi_get waits for missing keys: ask only for what is there
            return {r: Pulse.from_json(v) for r, v in enumerate(self._store.multi_get(keys))}
        return {r: Pulse.from_json(self._store.get(k)) if self._store.check([k]) else None for r, k in enumerate(keys)}

    # -- ending the job ------------------------------------------------------------------------------------
    def _end(self, verdict: dict[str, Any]) -> None:
        """Act on a verdict in the store: print, kill a stopped rank on this machine, leave."""
        if self._stopping.is_set():
            return
        for target in verdict["kill"]:
            _kill_if_here(target, self._identity)
        lines = [f"error: {verdict['text']}"] if verdict["writer"] == self.rank else []
        if self.rank in verdict["ranks"]:  # it still runs, so it can say in full where it is stuck
            stack = "".join(traceback.format_stack(sys._current_frames().get(threading.main_thread().ident)))
            lines.append(f"rank {self.rank}, named by rank {verdict['writer']}'s hang verdict, is stuck here:\n{stack}")
        self._exit("\n".join(lines))

    def _exit(self, message: str) -> None:
        if self._stopping.is_set():  # the run ended on purpose meanwhile
            return
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        # the main thread is stuck (or waits at a collective for a rank that is): nothing can unwind it
        os._exit(HANG_EXIT_CODE)


def _kill_target(pulse: Pulse) -> dict[str, Any]:
    """What a rank needs to kill a stopped one: where it runs and which process it is."""
    return {"host": pulse.host, "pid": pulse.pid, "started": pulse.started}


def _identity() -> tuple[str, int, int]:
    """(hostname/boot id, pid, process start time): which machine and which process this is."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return f"{socket.gethostname()}/{boot}", os.getpid(), _start_time(os.getpid())


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); 0 when unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _kill_if_here(target: dict[str, Any], identity: tuple[str, int, int]) -> None:
    """SIGKILL a stopped rank that runs on this machine, if it is still the process that published its pulse."""
    host, pid, started = target["host"], target["pid"], target["started"]
    if host != identity[0] or not started or pid == identity[1] or _start_time(pid) != started:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:  # gone already, or not ours to kill
        pass


def _main_thread_where(depth: int = 3) -> str:
    """The main thread's innermost frames, innermost first: 'data/reader.py:57 read < data/loader.py:80 next'."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return ""
    stack = traceback.extract_stack(frame)[-depth:]
    return " < ".join(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                      for f in reversed(stack))
