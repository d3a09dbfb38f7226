"""A run resumed on another number of ranks repeats the uninterrupted run's losses.

FSDP (DCP folders): 2 -> 1, 1 -> 2 and 2 -> 4 ranks, against the uninterrupted 2-rank run, within 1e-6.
DeepSpeed (converted to a universal checkpoint on the way): ZeRO-2 2 -> 2 -> 1 -> 2 and ZeRO-3 2 -> 1, against
one process, within 1e-5. Its 2-rank runs start under torchrun, which costs less than the deepspeed launcher
(19 s of CPU against 21 s, 38 s of wall time against 59 s, on the loaded box); test_deepspeed.py runs the
launcher itself.
"""
import shutil
from pathlib import Path

import pytest

from gpt.build import build_run
from gpt.checkpoint import entry_name
from gpt.config import load_config
from gpt.trainer import Trainer
from tests.conftest import run_script, tiny_argv
from tests.distributed.conftest import FSDP_RUN
from tests.distributed.launch import assert_close, losses, reference_run, torchrun

# test_deepspeed.py's configuration, so both share one reference run
ZERO = dict(dropout=0.0, gradient_accumulation_steps=2, max_iters=10, lr_decay_iters=10, eval_interval=5)
CONVERTING = "converting it to a DeepSpeed universal checkpoint"


def fork(src: Path, dst: Path, iter_num: int) -> Path:
    """A new out_dir whose latest checkpoint is src's at `iter_num`, with src's metrics up to there."""
    dst.mkdir()
    shutil.copytree(src / entry_name(iter_num), dst / entry_name(iter_num))
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")  # the resumed run rewinds it to iter_num
    (dst / "latest").write_text(entry_name(iter_num))
    return dst


def since(values: dict[int, float], iter_num: int) -> dict[int, float]:
    return {i: v for i, v in values.items() if i >= iter_num}


def test_fsdp_resumes_on_fewer_and_more_ranks(tiny_data, tmp_path, fsdp_two_ranks, one_process_group):
    uninterrupted = losses(fsdp_two_ranks)
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
        worst = assert_close(since(losses(out), start), since(uninterrupted, start), 1e-6)
        assert_close(since(losses(out, "eval", "val_loss"), start + 1),
                     since(losses(fsdp_two_ranks, "eval", "val_loss"), start + 1), 1e-6)
        print(f"FSDP resumed {name} at iteration {start}: largest loss difference from the uninterrupted "
              f"2-rank run over iterations {start}-19: {worst:.2e}")


def test_zero2_resumes_on_the_same_fewer_and_more_ranks(tiny_data, tmp_path_factory, tmp_path):
    pytest.importorskip("deepspeed")
    argv = lambda max_iters, resume=True: [*tiny_argv(tiny_data, tmp_path, **{**ZERO, "max_iters": max_iters}),
                                           "--zero_stage=2", *(["--init_from=resume"] if resume else [])]
    first = torchrun(argv(3, resume=False))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    same = torchrun(argv(5))  # 2 -> 2: DeepSpeed's own checkpoint, no conversion
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    assert "resuming from" in same.stdout and CONVERTING not in same.stdout
    fewer = run_script("launch/train.py", *argv(7), timeout=300, env={"OMP_NUM_THREADS": "1"})  # 2 -> 1
    assert fewer.returncode == 0, fewer.stdout[-3000:] + fewer.stderr[-3000:]
    assert f"ckpt-0000005 was saved by 2 rank(s) with ZeRO-2; {CONVERTING}" in fewer.stdout
    more = torchrun(argv(10))  # 1 -> 2
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert f"ckpt-0000007 was saved by 1 rank(s) with ZeRO-2; {CONVERTING}" in more.stdout
    worst = assert_close(losses(tmp_path), losses(reference_run(tiny_data, tmp_path_factory, ZERO)), 1e-5)
    print(f"ZeRO-2 resumed 2->2 at 3, 2->1 at 5, 1->2 at 7 vs one process, largest loss difference: {worst:.2e}")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [entry_name(10)]  # superseded entries are removed


def test_zero3_resumes_on_fewer_ranks(tiny_data, tmp_path_factory, tmp_path):
    pytest.importorskip("deepspeed")
    first = torchrun([*tiny_argv(tiny_data, tmp_path, **{**ZERO, "max_iters": 5}), "--zero_stage=3"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    fewer = run_script("launch/train.py", *tiny_argv(tiny_data, tmp_path, **ZERO, init_from="resume"),
                       "--zero_stage=3", timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert fewer.returncode == 0, fewer.stdout[-3000:] + fewer.stderr[-3000:]
    assert f"saved by 2 rank(s) with ZeRO-3; {CONVERTING}" in fewer.stdout
    worst = assert_close(losses(tmp_path), losses(reference_run(tiny_data, tmp_path_factory, ZERO)), 1e-5)
    print(f"ZeRO-3 resumed 2->1 at 5 vs one process, largest loss difference: {worst:.2e}")
