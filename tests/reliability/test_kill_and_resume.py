"""kill -9 at any moment, even mid-save, or SIGTERM, then resume: the losses of the run that was never interrupted."""
import signal

from gpt.checkpoint import KILL_IN_SAVE, load_checkpoint
from tests.conftest import logged, tiny_argv
from tests.reliability.runs import kill, logged_iters, start, train, wait_for

# dropout on: a resume must restore every RNG stream to repeat the losses bit for bit
RUN = dict(max_iters=40, lr_decay_iters=40, eval_interval=10, dropout=0.1, gradient_accumulation_steps=2,
           n_embd=64, batch_size=8, block_size=32, always_save_checkpoint=True)


def test_kill_9_between_saves_and_mid_save_then_resume_matches_bit_for_bit(tiny_data, reference_losses, tmp_path):
    proc = start(tiny_argv(tiny_data, tmp_path, **RUN))
    assert wait_for(lambda: logged_iters(tmp_path) > 14, proc), "the run ended before the kill point"
    kill(proc)  # between the checkpoints of iterations 10 and 20
    # resumed, then killed while writing the checkpoint of iteration 30: ckpt.pt still names 20, complete
    died = train(tiny_argv(tiny_data, tmp_path, **RUN, init_from="auto"), env={KILL_IN_SAVE: "30"})
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert list(tmp_path.glob(".ckpt-0000030.pt.tmp-*")) and load_checkpoint(tmp_path)["iter_num"] == 20
    resumed = train(tiny_argv(tiny_data, tmp_path, **RUN, init_from="auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".ckpt*.tmp-*"))
    assert logged(tmp_path) == reference_losses(RUN)  # every iteration, before and after both kills, bit-identical


def test_sigterm_saves_and_exits_zero_then_resumes_exactly(tiny_data, reference_losses, tmp_path):
    proc = start(tiny_argv(tiny_data, tmp_path, **RUN))
    assert wait_for(lambda: logged_iters(tmp_path) > 23, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopping at iter" in out and "SIGTERM" in out and "--init_from=resume" in out
    stopped = load_checkpoint(tmp_path)["iter_num"]
    assert 23 < stopped < 40
    resumed = train(tiny_argv(tiny_data, tmp_path, **RUN, init_from="resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert logged(tmp_path) == reference_losses(RUN)
