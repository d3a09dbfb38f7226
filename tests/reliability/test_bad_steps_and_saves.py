"""Non-finite steps and fp16 overflows are skipped, reported and counted; bad weights are never saved;
a save that fails leaves the previous checkpoint."""
import math
import resource
import signal

import pytest
import torch

from gpt import build
from gpt.build import build_run
from gpt.checkpoint import load_checkpoint
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.reliability.runs import train
from tests.step_probe import StepProbe, poison_loss


def trainer_for(tiny_data, out_dir, **overrides) -> Trainer:
    return Trainer(build_run(load_config(tiny_argv(tiny_data, out_dir, **overrides))))


def test_a_nan_step_is_skipped_reported_and_the_checkpoint_stays_finite(tiny_data, tmp_path, capsys):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=8, eval_interval=4)
    poison_loss(trainer, {3})
    probe = StepProbe(trainer)
    summary = trainer.run()
    probe.close()
    assert "iter 3: non-finite gradients" in capsys.readouterr().out
    assert not probe.steps[3]["applied"] and not probe.steps[3]["changed"]  # the skipped step changed nothing
    assert probe.steps[4]["applied"] and probe.steps[4]["changed"]  # the next one trained
    assert summary.iters == 8 and math.isfinite(summary.best_val_loss)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path)["model"].values())


def test_too_many_bad_steps_in_a_row_stop_the_run_clearly(tiny_data, tmp_path):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=20, eval_interval=4, max_bad_steps=3)
    poison_loss(trainer, set(range(5, 20)))
    with pytest.raises(GPTError, match=r"3 steps in a row had NaN/Inf gradients"):
        trainer.run()
    ckpt = load_checkpoint(tmp_path)  # the checkpoint at iter 4, from before the trouble
    assert ckpt["iter_num"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def overflow_fp16(trainer: Trainer, iters: set[int]) -> None:
    """A finite loss so large at `iters` that its fp16 gradients overflow, as a loss spike does under loss scaling."""
    model = trainer.built.model
    clean = model.forward

    def forward(*args, **kwargs):
        logits, loss = clean(*args, **kwargs)
        return logits, loss * 1e30 if model.training and trainer.iter_num in iters else loss

    model.forward = forward


def test_fp16_overflow_steps_are_skipped_reported_and_counted(tiny_data, tmp_path, capsys, monkeypatch):
    # fp16 with its GradScaler, on this CPU (launch/train.py refuses fp16 training on CPU as slow, not as wrong)
    monkeypatch.setattr(build, "resolve_dtype", lambda name, device: torch.float16)
    trainer = trainer_for(tiny_data, tmp_path, max_iters=12, eval_interval=4, max_bad_steps=3)
    assert trainer.built.dtype == torch.float16
    overflow_fp16(trainer, {3, 6, 7, 8})
    probe = StepProbe(trainer)
    with pytest.raises(GPTError, match="3 steps in a row"):  # 6, 7 and 8
        trainer.run()
    probe.close()
    printed = capsys.readouterr().out
    assert "iter 3: non-finite gradients or an fp16 overflow" in printed and "(1 in a row, at most 3)" in printed
    assert [it for it, step in probe.steps.items() if not step["applied"]] == [3, 6, 7, 8]
    assert not probe.steps[3]["changed"] and probe.steps[4]["changed"]


def test_weights_with_nan_are_never_saved(tiny_data, tmp_path):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=4, eval_interval=4)
    trainer.run()
    before = (tmp_path / "ckpt.pt").read_bytes()
    with torch.no_grad():
        trainer.built.model.lm_head.weight[0, 0] = math.inf
    with pytest.raises(GPTError, match="refusing to save"):
        trainer.save()
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def limit_file_size(max_bytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_a_save_on_a_full_disk_fails_clearly_and_keeps_the_old_checkpoint(tiny_data, tmp_path):
    trainer_for(tiny_data, tmp_path, max_iters=4, eval_interval=4).run()
    before = (tmp_path / "ckpt.pt").read_bytes()
    # room for the metrics lines but not for another checkpoint: what a nearly full disk looks like
    full = train(tiny_argv(tiny_data, tmp_path, max_iters=8, eval_interval=4, init_from="resume"),
                 preexec=limit_file_size(len(before) // 2))
    assert full.returncode == 2, full.stderr
    assert "could not write checkpoint" in full.stderr and "previous checkpoint is untouched" in full.stderr
    assert "Traceback" not in full.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == before and load_checkpoint(tmp_path)["iter_num"] == 4
    assert not list(tmp_path.glob(".ckpt*tmp*"))
