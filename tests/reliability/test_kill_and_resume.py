"""kill -9 at any moment, then resume: the losses are those of the run that was never interrupted."""
import random
import signal

import pytest
import torch

from gpt.checkpoint import load_checkpoint
from tests.conftest import tiny_argv
from tests.reliability.runs import kill, logged_iters, start, train, train_losses, wait_for

RUN = dict(max_iters=60, lr_decay_iters=60, eval_interval=10, dropout=0.1, gradient_accumulation_steps=2,
           n_embd=64, batch_size=8, block_size=32, always_save_checkpoint=True)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = train(tiny_argv(tiny_data, out, **RUN))
    assert result.returncode == 0, result.stderr
    return train_losses(out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_iteration_then_resume_matches_bit_for_bit(tiny_data, reference, tmp_path, seed):
    target = random.Random(seed).randrange(3, 55)
    proc = start(tiny_argv(tiny_data, tmp_path, **RUN))
    assert wait_for(lambda: logged_iters(tmp_path) > target, proc), "the run ended before the kill point"
    kill(proc)
    resumed = train(tiny_argv(tiny_data, tmp_path, **RUN, init_from="auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert train_losses(tmp_path) == reference  # every iteration, before and after the kill, bit-identical


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tiny_data, tmp_path):
    big = {**RUN, "n_embd": 256, "n_layer": 3, "n_head": 4, "max_iters": 24, "lr_decay_iters": 24, "eval_interval": 4}
    reference = tmp_path / "reference"
    assert train(tiny_argv(tiny_data, reference, **big)).returncode == 0
    out = tmp_path / "killed"
    for attempt in range(5):  # a write takes a fraction of a second: catch one in the act
        proc = start(tiny_argv(tiny_data, out, **big, init_from="auto"))
        # a write that replaces an existing checkpoint (the first one has nothing to protect)
        writing = lambda: (out / "ckpt.pt").exists() and any(out.glob(".ckpt-*.tmp-*"))  # noqa: E731
        if wait_for(writing, proc) and (writing() or proc.poll() is None):
            kill(proc)
            if any(out.glob(".ckpt-*.tmp-*")):
                break
        else:
            proc.communicate(timeout=120)
    else:
        pytest.fail("never caught a checkpoint mid-write")
    before = load_checkpoint(out)  # ckpt.pt still names a complete checkpoint
    assert all(torch.isfinite(v).all() for v in before["model"].values())
    resumed = train(tiny_argv(tiny_data, out, **big, init_from="auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert not any(out.glob(".ckpt*.tmp-*"))
    assert train_losses(out) == train_losses(reference)


def test_sigterm_saves_and_exits_zero_then_resumes_exactly(tiny_data, reference, tmp_path):
    proc = start(tiny_argv(tiny_data, tmp_path, **RUN))
    assert wait_for(lambda: logged_iters(tmp_path) > 23, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopping at iter" in out and "SIGTERM" in out and "--init_from=resume" in out
    stopped = load_checkpoint(tmp_path)["iter_num"]
    assert 23 < stopped < 60
    resumed = train(tiny_argv(tiny_data, tmp_path, **RUN, init_from="resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert train_losses(tmp_path) == reference


def test_time_limit_stops_in_time_with_a_checkpoint(tiny_data, tmp_path):
    result = train(tiny_argv(tiny_data, tmp_path, **{**RUN, "max_iters": 100000, "lr_decay_iters": 100000},
                             time_limit="12s"))
    assert result.returncode == 0, result.stderr
    assert "time_limit" in result.stdout
    assert 0 < load_checkpoint(tmp_path)["iter_num"] < 100000
