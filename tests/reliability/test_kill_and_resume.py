"""SIGTERM, kill -9 between saves and kill -9 mid-save, one after the other, then resume: the losses of the run
that was never interrupted. Each fault strikes a real `launch/train.py` process at a known iteration
(tests/distributed/worker.py's hooks and GPT_TEST_KILL_IN_SAVE), so no test races the run it kills."""
import signal

from gpt.checkpoint import KILL_IN_SAVE, load_checkpoint
from tests.conftest import logged, tiny_argv
from tests.distributed.launch import one_process

# dropout on: a resume must restore every RNG stream to repeat the losses bit for bit
RUN = dict(max_iters=30, lr_decay_iters=30, eval_interval=10, dropout=0.1, gradient_accumulation_steps=2)


def test_sigterm_then_kill_9_between_saves_then_mid_save_each_resume_bit_for_bit(tiny_data, reference_losses,
                                                                                tmp_path):
    argv = tiny_argv(tiny_data, tmp_path, **RUN, init_from="auto")
    stopped = one_process(argv, env={"TEST_SIGTERM_AT": "7"})
    assert stopped.returncode == 0, stopped.stderr[-3000:]  # the scheduler's SIGTERM: save and exit 0
    assert "stopping at iter 8 (SIGTERM)" in stopped.stdout and "--init_from=resume" in stopped.stdout
    assert load_checkpoint(tmp_path)["iter_num"] == 8
    killed = one_process(argv, env={"TEST_DIE_AT": "15"})  # resumed at 8, killed between the saves of 10 and 20
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load_checkpoint(tmp_path)["iter_num"] == 10
    # resumed at 10, killed while writing the checkpoint of 20: ckpt.pt still names 10, complete
    died = one_process(argv, env={KILL_IN_SAVE: "20"})
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    assert list(tmp_path.glob(".ckpt-0000020.pt.tmp-*")) and load_checkpoint(tmp_path)["iter_num"] == 10
    resumed = one_process(argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(tmp_path.glob(".ckpt*.tmp-*"))
    assert logged(tmp_path) == reference_losses(RUN)  # every iteration, before and after every fault, bit-identical
