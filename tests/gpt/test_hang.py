"""Judging a hang from the ranks' pulses (gpt/hang.py), and the straggler note (gpt/straggler.py)."""
import pytest

from gpt.hang import Pulse, Watch
from gpt.straggler import straggler_note

QUIET_S = 5.0


def pulse(seq: int, beats: int, step: int, **kw) -> Pulse:
    return Pulse(seq=seq, beats=beats, step=step, **kw)


def watched(*readings: tuple[float, dict]) -> Watch:
    watch = Watch(world_size=len(readings[0][1]))
    for now, pulses in readings:
        watch.update(now, pulses)
    return watch


def test_a_rank_whose_thread_and_loop_are_both_quiet_is_named_as_stopped():
    watch = watched((0.0, {0: pulse(10, 30, 14), 1: pulse(7, 29, 14)}),
                    (3.0, {0: pulse(13, 30, 14), 1: pulse(7, 29, 14)}),
                    (6.0, {0: pulse(16, 30, 14), 1: pulse(7, 29, 14)}))
    verdict = watch.verdict(6.0, QUIET_S)
    assert (verdict.kind, verdict.ranks) == ("silent", (1,))
    text = verdict.explain(timeout_s=10, stalled_s=10.2, observer=0)
    assert "rank 1 stopped responding" in text and "last finished step 14" in text and "--dist_timeout=10" in text


def test_a_live_rank_behind_the_others_is_named_with_where_its_main_thread_is():
    stuck = pulse(5, 29, 14, where="data/reader.py:57 read")
    watch = watched((0.0, {0: pulse(10, 30, 14), 1: stuck, 2: pulse(3, 30, 14)}),
                    (6.0, {0: pulse(16, 30, 14), 1: pulse(11, 29, 14, where=stuck.where), 2: pulse(9, 30, 14)}))
    verdict = watch.verdict(6.0, QUIET_S)
    assert (verdict.kind, verdict.ranks) == ("behind", (1,))
    assert "rank 1 made no progress" in verdict.explain(10, 10.0, 0) and "data/reader.py:57 read" in verdict.explain(10, 10.0, 0)


def test_ranks_stopped_at_the_same_point_are_all_listed():
    watch = watched((0.0, {0: pulse(1, 8, 3, where="a.py:1 f"), 1: pulse(1, 8, 3, where="b.py:2 g")}),
                    (6.0, {0: pulse(9, 8, 3, where="a.py:1 f"), 1: pulse(9, 8, 3, where="b.py:2 g")}))
    verdict = watch.verdict(6.0, QUIET_S)
    assert (verdict.kind, verdict.ranks) == ("stuck", (0, 1))
    assert ("rank 0: last finished step 3, main thread at a.py:1 f; rank 1: last finished step 3, main thread at "
            "b.py:2 g" in verdict.explain(10, 10.0, 0))


@pytest.mark.parametrize("later", [
    {0: pulse(9, 31, 15), 1: pulse(9, 31, 15)},  # both moved again: no hang
    {0: pulse(9, 30, 14), 1: pulse(9, 29, 14, done=True)},  # rank 1 left its loop on purpose; rank 0 still moves
])
def test_no_verdict_while_the_job_moves_or_a_rank_left_on_purpose(later):
    watch = watched((0.0, {0: pulse(1, 30, 14), 1: pulse(1, 29, 14)}), (4.0, later),
                    (6.0, {r: p if r else pulse(10, 32, 15) for r, p in later.items()}))
    assert watch.verdict(6.0, QUIET_S) is None


def test_quiet_for_less_than_the_limit_is_no_hang_and_a_rank_never_seen_is_named():
    watch = watched((0.0, {0: pulse(1, 3, 0), 1: None}), (4.9, {0: pulse(5, 3, 0), 1: None}))
    assert watch.verdict(4.9, QUIET_S) is None
    watch.update(5.0, {0: pulse(6, 3, 0), 1: None})
    verdict = watch.verdict(5.0, QUIET_S)
    assert (verdict.kind, verdict.ranks) == ("silent", (1,))
    assert "rank 1: never started its heartbeat" in verdict.explain(10, 10.0, 0)


@pytest.mark.parametrize("local_s, note", [
    ([0.10, 0.10, 0.10, 0.21], "slowest rank 3: 2.1x median"),
    ([0.05, 0.10], "slowest rank 1: 2.0x median"),  # with two ranks, against the other one (not 1.3x)
    ([0.10, 0.14, 0.10, 0.11], None),  # 1.4x: jitter, not a straggler
    ([0.001, 0.004], None),  # 4x, but 3 ms: not worth a word
    ([0.2], None),  # one process
])
def test_a_rank_much_slower_than_the_median_is_named_as_a_straggler(local_s, note):
    assert straggler_note(local_s) == note
