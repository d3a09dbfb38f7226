"""Non-finite steps are skipped, never saved; a save that fails leaves the previous checkpoint."""
import math
import resource
import signal

import pytest
import torch

from gpt.checkpoint import load_checkpoint
from gpt.build import build_run
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.reliability.runs import train


def poisoned(trainer, bad_iters):
    """Make the training loss NaN at the given iterations, as a numerical blow-up would."""
    model = trainer.built.model
    clean = model.forward

    def forward(*args, **kwargs):
        logits, loss = clean(*args, **kwargs)
        if model.training and trainer.iter_num in bad_iters:
            loss = loss * math.nan
        return logits, loss

    model.forward = forward


def test_a_nan_step_is_skipped_and_the_checkpoint_stays_finite(tiny_data, tmp_path, capsys):
    trainer = Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, max_iters=8, eval_interval=4))))
    poisoned(trainer, {3})
    weights = {}
    step = trainer.step

    def remember():
        weights[trainer.iter_num] = {k: v.clone() for k, v in trainer.built.model.state_dict().items()}
        return step()

    trainer.step = remember
    summary = trainer.run()
    printed = capsys.readouterr().out
    assert "iter 3: non-finite gradients" in printed and "step skipped (1 in a row" in printed
    assert all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # the skipped step changed nothing
    assert not all(torch.equal(weights[4][k], weights[5][k]) for k in weights[4])  # the next one trained
    assert summary.iters == 8 and math.isfinite(summary.best_val_loss)
    ckpt = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_too_many_bad_steps_in_a_row_stop_the_run_clearly(tiny_data, tmp_path):
    trainer = Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, max_iters=20, eval_interval=4, max_bad_steps=3))))
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
    trainer = Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, max_iters=4, eval_interval=4))))
    trainer.run()
    before = (tmp_path / "ckpt.pt").read_bytes()
    with torch.no_grad():
        trainer.built.model.lm_head.weight[0, 0] = math.inf
    with pytest.raises(GPTError, match="refusing to save"):
        trainer.save()
    assert (tmp_path / "ckpt.pt").read_bytes() == before
