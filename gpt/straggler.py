"""Stragglers: the rank that makes a synchronous step slow, for the progress line.

In data-parallel training every rank leaves a step's all-reduce together, so the
step's wall time is the same on every rank and says nothing about who was slow.
What differs is the work a rank did before it had to wait for the others: its data
wait and its forwards (plus the backwards of micro-steps under `no_sync`). Each rank
measures that, the trainer all-gathers the one float on a logged step, and
`straggler_note` turns the list into "slowest rank 3: 2.1x median", or None.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

# A rank 1.5x slower than the others makes every step wait a third of its time for it. Below that the
# spread is mostly noise: two identical CPU ranks on this 2-core box, oversubscribed (load 15), differed per
# step by a median 1.05x, p90 1.31x, p99 1.57x (1.5x or more on 7 of 290 steps; docs/benchmarks.md, "Hang
# detection"). A real straggler shows on every progress line, noise on one now and then.
STRAGGLER_RATIO = 1.5
# ...and a rank whose excess is under 10 ms per step costs little, whatever the ratio (timer and scheduler
# jitter is of the order of a millisecond on a loaded CPU).
STRAGGLER_MIN_EXCESS_S = 0.010


def straggler_note(local_s: Sequence[float], ratio: float = STRAGGLER_RATIO,
                   min_excess_s: float = STRAGGLER_MIN_EXCESS_S) -> Optional[str]:
    """'slowest rank R: X.Xx median' when one rank's work time stands out, else None.

    `local_s[r]` is rank r's time in the step before it first waited for the others.
    The median is that of the *other* ranks: with two ranks, the median of both would
    hide half of the difference (a rank 2x slower would read 1.3x).
    """
    if len(local_s) < 2:
        return None
    slowest = max(range(len(local_s)), key=lambda r: local_s[r])
    median = statistics.median(t for r, t in enumerate(local_s) if r != slowest)
    excess = local_s[slowest] - median
    if median <= 0 or excess < min_excess_s or local_s[slowest] < ratio * median:
        return None
    return f"slowest rank {slowest}: {local_s[slowest] / median:.1f}x median"
