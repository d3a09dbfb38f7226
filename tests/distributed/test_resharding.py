"""A run resumed on another number of ranks repeats the uninterrupted run's losses.

FSDP (DCP folders): 2 -> 1, 1 -> 2 and 2 -> 4 ranks, against the uninterrupted 2-rank run, within 1e-6.
DeepSpeed (converted to a universal checkpoint on the way): ZeRO-2 2 -> 1 -> 2 against one process, within
1e-5, and a conversion that cannot be done refused with the reason (ZeRO-2 2 -> 2 and ZeRO-3 2 -> 1:
test_deepspeed.py). Its 2-rank runs start under torchrun, which costs less than the deepspeed launcher
(19 s of CPU against 21 s, 38 s of wall time against 59 s, on the loaded box); test_deepspeed.py runs the
launcher itself.
"""
import pytest

from gpt.build import build_run
from gpt.checkpoint import entry_name
from gpt.config import load_config
from gpt.trainer import Trainer
from tests.conftest import logged, tiny_argv
from tests.distributed.conftest import FSDP_RUN
from tests.distributed.launch import DIST, assert_close, fork, ok, one_process, rank_records, torchrun, until

pytestmark = pytest.mark.long  # chains of launches, minutes on 2 cores: `make test-long` and CI run them

# test_deepspeed.py's configuration, so both share one reference run (DIST's 30-step schedule, stopped at 10)
ZERO = {**DIST, "max_iters": 10}
CONVERTING = "converting it to a DeepSpeed universal checkpoint"


def since(values: dict[int, float], iter_num: int) -> dict[int, float]:
    return {i: v for i, v in values.items() if i >= iter_num}


def test_fsdp_resumes_on_fewer_and_more_ranks(tiny_data, tmp_path, fsdp_two_ranks, one_process_group):
    uninterrupted = logged(fsdp_two_ranks)
    argv = lambda out: tiny_argv(tiny_data, out, strategy="fsdp", **FSDP_RUN, keep_last=4, init_from="resume")
    one = fork(fsdp_two_ranks, tmp_path / "one", 5)  # 2 -> 1, in this process
    Trainer(build_run(load_config(argv(one)))).run()
    two = fork(one, tmp_path / "two", 10)  # 1 -> 2
    result = torchrun(argv(two))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "saved by 1 rank(s), now 2" in result.stdout
    four = fork(fsdp_two_ranks, tmp_path / "four", 15)  # 2 -> 4
    result = torchrun(argv(four), nproc=4)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "saved by 2 rank(s), now 4" in result.stdout
    for name, out, start in (("2->1", one, 5), ("1->2", two, 10), ("2->4", four, 15)):
        worst = assert_close(since(logged(out), start), since(uninterrupted, start), 1e-6)
        assert_close(since(logged(out, "val_loss"), start + 1), since(logged(fsdp_two_ranks, "val_loss"), start + 1),
                     1e-6)
        print(f"FSDP resumed {name} at iteration {start}: largest loss difference from the uninterrupted "
              f"2-rank run over iterations {start}-19: {worst:.2e}")


def test_zero2_resumes_on_fewer_and_more_ranks_and_a_conversion_that_cannot_be_done_is_refused(
        tiny_data, reference_losses, tmp_path):
    pytest.importorskip("deepspeed")
    argv = lambda out, max_iters, resume=True: [*tiny_argv(tiny_data, out, **{**ZERO, "max_iters": max_iters}),
                                                "--zero_stage=2", *(["--init_from=resume"] if resume else [])]
    ok(torchrun(argv(tmp_path, 5, resume=False)))  # (resumed on the same 2 ranks: test_deepspeed.py)
    # rank 1's shards never reached this disk (two nodes, no shared file system): nothing to convert from
    lost = fork(tmp_path, tmp_path / "lost", 5)
    (lost / entry_name(5) / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    refused = one_process(argv(lost, 7))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"could not convert {lost / entry_name(5)} into a DeepSpeed universal checkpoint" in refused.stderr
    assert "Resume with 2 ranks instead" in refused.stderr
    fewer = one_process(argv(tmp_path, 7))  # 2 -> 1
    ok(fewer)
    assert f"ckpt-0000005 was saved by 2 rank(s) with ZeRO-2; {CONVERTING}" in fewer.stdout
    more = torchrun(argv(tmp_path, 10))  # 1 -> 2
    ok(more)
    assert f"ckpt-0000007 was saved by 1 rank(s) with ZeRO-2; {CONVERTING}" in more.stdout
    rank_records(tmp_path, 2)
    worst = assert_close(logged(tmp_path), until(reference_losses(DIST), 9))
    print(f"ZeRO-2 resumed 2->1 at 5, 1->2 at 7 vs one process, largest loss difference: {worst:.2e}")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [entry_name(10)]  # superseded entries are removed
