"""Non-finite steps are skipped, never saved; a save that fails leaves the previous checkpoint."""
import math
import resource
import signal

import pytest
import torch

from gpt.checkpoint import load_checkpoint
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.reliability.runs import train


def poisoned(trainer: Trainer, bad_iters) -> None:
    """Make the loss NaN on the given optimizer steps, as a corrupt batch or an overflow would."""
    clean = trainer._loss

    def loss(x, y):
        value = clean(x, y)
        return value * math.nan if trainer.strategy.model.training and trainer.iter_num in bad_iters else value

    trainer._loss = loss


def test_a_nan_step_is_skipped_and_the_checkpoint_stays_finite(tiny_data, tmp_path, capsys):
    trainer = Trainer(load_config(tiny_argv(tiny_data, tmp_path, max_iters=8, eval_interval=4)))
    poisoned(trainer, {3})
    before = {}

    def remember(step=trainer.train_step):
        if trainer.iter_num == 3:
            before.update({k: v.clone() for k, v in trainer.strategy.raw_model.state_dict().items()})
        loss = step()
        if trainer.iter_num == 4:  # the skipped step left every weight as it was
            after = trainer.strategy.raw_model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)
        return loss

    trainer.train_step = remember
    summary = trainer.run()
    printed = capsys.readouterr().out
    assert "iter 3: non-finite gradients" in printed and "step skipped (1 in a row" in printed
    assert summary.iters == 8 and math.isfinite(summary.best_val_loss)
    ckpt = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_too_many_bad_steps_in_a_row_stop_the_run_clearly(tiny_data, tmp_path):
    trainer = Trainer(load_config(tiny_argv(tiny_data, tmp_path, max_iters=20, eval_interval=4, max_bad_steps=3)))
    poisoned(trainer, set(range(5, 20)))
    with pytest.raises(GPTError, match=r"3 steps in a row had NaN/Inf gradients"):
        trainer.run()
    ckpt = load_checkpoint(tmp_path)  # the checkpoint at iter 4, from before the trouble
    assert ckpt["iter_num"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def limit_file_size(max_bytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_a_save_on_a_full_disk_fails_clearly_and_keeps_the_old_checkpoint(tiny_data, tmp_path):
    assert train(tiny_argv(tiny_data, tmp_path, max_iters=4, eval_interval=4)).returncode == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    # room for the metrics lines but not for another checkpoint: what a nearly full disk looks like
    full = train(tiny_argv(tiny_data, tmp_path, max_iters=8, eval_interval=4, init_from="resume"),
                 preexec=limit_file_size(len(before) // 2))
    assert full.returncode == 2, full.stderr
    assert "could not write checkpoint" in full.stderr and "previous checkpoint is untouched" in full.stderr
    assert "Traceback" not in full.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == before and load_checkpoint(tmp_path)["iter_num"] == 4
    assert not list(tmp_path.glob(".ckpt*tmp*"))


def test_weights_with_nan_are_never_saved(tiny_data, tmp_path):
    trainer = Trainer(load_config(tiny_argv(tiny_data, tmp_path, max_iters=4, eval_interval=4)))
    trainer.run()
    before = (tmp_path / "ckpt.pt").read_bytes()
    with torch.no_grad():
        trainer.strategy.raw_model.lm_head.weight[0, 0] = math.inf
    with pytest.raises(GPTError, match="refusing to save"):
        trainer.save()
    assert (tmp_path / "ckpt.pt").read_bytes() == before
