"""Deciding that a job hangs, and which rank to blame, from what the ranks publish.

Every rank publishes a `Pulse` (gpt/heartbeat.py): `seq` is bumped by its heartbeat
thread at every tick (the process runs), `beats` by its main loop at every point of
progress (the training moves). A `Watch` is one observer's memory of when each rank's
two counters last changed, measured in the observer's own monotonic clock: ranks never
compare timestamps, so clock skew between nodes cannot cause or hide a verdict.

Training is synchronous: when one rank stops, the others stop too, within a step, at
their next collective. So the question is never "who is quiet" (all are) but "who are
the others waiting for":
1. a rank whose heartbeat thread is quiet too: the whole process is stopped (SIGSTOP,
   a debugger), frozen, or its node is unreachable;
2. otherwise, the ranks whose progress count is behind the others': their main thread is
   stuck (a data read, a deadlock) while the others wait at a collective one beat ahead;
3. otherwise every rank stopped at the same point: nobody can be singled out, and the
   verdict lists where each main thread is.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Pulse:
    """What one rank publishes at every tick of its heartbeat thread."""

    seq: int  # bumped by the heartbeat thread at every tick: the process runs
    beats: int  # bumped by the main loop at every point of progress: the training moves
    step: Optional[int]  # the last step this rank finished (None before its first)
    where: str = ""  # the main thread's innermost frames, published while it makes no progress
    done: bool = False  # the rank has left its loop on purpose: not to be judged any more
    host: str = ""  # hostname/boot id: which machine, to kill a stopped rank on the observer's own
    pid: int = 0
    started: int = 0  # the process's start time (clock ticks since boot): a reused pid is another process

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: bytes | str) -> "Pulse":
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Who hangs: `kind` is "silent", "behind" or "stuck" (see the module docstring)."""

    kind: str
    ranks: tuple[int, ...]
    pulses: dict[int, Optional[Pulse]]  # each named rank's last pulse (None: never published)

    def explain(self, timeout_s: float, stalled_s: float, observer: int) -> str:
        """The paragraph a user reads: who, the last step it finished, why, and what happens next."""
        who = _ranks(self.ranks)
        details = "; ".join(f"rank {r}: {_last_step(self.pulses[r])}" + _where(self.pulses[r]) for r in self.ranks)
        if self.kind == "silent":
            what = (f"{who} stopped responding: neither its training loop nor its heartbeat thread has moved for "
                    f"{stalled_s:.1f} s, so the process is stopped (SIGSTOP, a debugger), frozen, or its node is "
                    f"unreachable ({details}).")
        elif self.kind == "behind":
            what = f"{who} made no progress for {stalled_s:.1f} s while the other ranks wait for it ({details})."
        else:
            what = f"no rank made progress for {stalled_s:.1f} s and none is behind the others ({details})."
        return (f"hang detected by rank {observer}'s heartbeat (--dist_timeout={timeout_s:g}): {what} Ending the job: "
                "torchrun --max-restarts, or a requeued Slurm job with --init_from=auto, resumes it from the last "
                "checkpoint. If the ranks were only slow (an eval or checkpoint save longer than the timeout), raise "
                "--dist_timeout.")


class Watch:
    """One observer's memory of when each rank last moved, in the observer's clock."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        """Forget everything: the observer made progress, so whatever it saw is no longer a hang."""
        self.last: dict[int, Optional[Pulse]] = {}
        self.alive_at: dict[int, float] = {}  # when the rank's seq last changed
        self.moved_at: dict[int, float] = {}  # when its beats last changed

    def update(self, now: float, pulses: dict[int, Optional[Pulse]]) -> None:
        """Record one reading of every rank's pulse (None where a rank has published none)."""
        for rank in range(self.world_size):
            pulse, seen = pulses.get(rank), rank in self.last
            before = self.last.get(rank)
            if not seen or (pulse is not None and (before is None or pulse.seq != before.seq)):
                self.alive_at[rank] = now
            if not seen or (pulse is not None and (before is None or pulse.beats != before.beats)):
                self.moved_at[rank] = now
            self.last[rank] = pulse if pulse is not None else before

    def verdict(self, now: float, quiet_s: float) -> Optional[Verdict]:
        """Who hangs, judging ranks that have not moved for `quiet_s` in this observer's clock; None if nobody."""
        live = [r for r in range(self.world_size) if r in self.last and not (self.last[r] and self.last[r].done)]
        if not live:
            return None
        quiet = [r for r in live if now - self.moved_at[r] >= quiet_s]
        silent = tuple(r for r in quiet if self.last[r] is None or now - self.alive_at[r] >= quiet_s)
        if silent:
            return self._verdict("silent", silent)
        ahead = max(self._beats(r) for r in live)
        behind = tuple(r for r in quiet if self._beats(r) < ahead)
        if behind:
            return self._verdict("behind", behind)
        if len(quiet) == len(live):
            return self._verdict("stuck", tuple(live))
        return None

    def _beats(self, rank: int) -> int:
        pulse = self.last[rank]
        return pulse.beats if pulse is not None else -1

    def _verdict(self, kind: str, ranks: tuple[int, ...]) -> Verdict:
        return Verdict(kind, ranks, {r: self.last[r] for r in ranks})


def _ranks(ranks: tuple[int, ...]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _last_step(pulse: Optional[Pulse]) -> str:
    if pulse is None:
        return "never started its heartbeat"
    return f"last finished step {pulse.step}" if pulse.step is not None else "no step finished yet"


def _where(pulse: Optional[Pulse]) -> str:
    return f", main thread at {pulse.where}" if pulse is not None and pulse.where else ""
