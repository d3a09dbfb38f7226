"""Training runs: outputs a user reads, checkpoints, and exact resume."""
import json
import math

import pytest
import torch
import yaml

from gpt.checkpoint import load_checkpoint, save_checkpoint
from gpt.build import build_run
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.trainer import Trainer
from tests.conftest import tiny_argv


def train(tiny_data, out_dir, **overrides):
    return Trainer(build_run(load_config(tiny_argv(tiny_data, out_dir, **overrides)))).run()


def records(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_run_writes_config_metrics_and_checkpoint(tiny_data, tmp_path, capsys):
    assert train(tiny_data, tmp_path).iters == 8
    printed = capsys.readouterr().out
    assert '"n_layer": 2' in printed and "without position embeddings" in printed
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["n_layer"] == 2 and resolved["vocab_size"] > 0
    train_lines = records(tmp_path, "train")
    assert [r["iter"] for r in train_lines] == list(range(8))
    assert all({"loss", "lr", "dt_ms", "tokens_per_s"} <= set(r) for r in train_lines)
    assert [r["iter"] for r in records(tmp_path, "eval")] == [0, 4, 8]
    assert all({"train_loss", "val_loss"} <= set(r) for r in records(tmp_path, "eval"))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["iter_num"] == 8 and ckpt["loader"]["step"] == 8
    assert {"model", "optimizer", "scaler", "rng", "config", "tokenizer", "best_val_loss"} <= set(ckpt)
    assert not list(tmp_path.glob(".*tmp*"))


def test_loss_falls_during_training(tiny_data, tmp_path):
    train(tiny_data, tmp_path, max_iters=60, eval_interval=60, learning_rate=1e-2, warmup_iters=5, lr_decay_iters=60,
          dropout=0.0)
    evals = records(tmp_path, "eval")
    assert evals[-1]["val_loss"] < 0.6 * evals[0]["val_loss"]


def test_resumed_run_repeats_the_uninterrupted_losses_exactly(tiny_data, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(tiny_data, whole, max_iters=10, lr_decay_iters=10, gradient_accumulation_steps=2)
    train(tiny_data, part, max_iters=6, lr_decay_iters=10, gradient_accumulation_steps=2)
    train(tiny_data, part, max_iters=10, lr_decay_iters=10, gradient_accumulation_steps=2, init_from="resume")
    expected = [r["loss"] for r in records(whole, "train")]
    got = [r["loss"] for r in records(part, "train")]
    assert got == expected  # bit-identical on CPU, dropout included
    part_evals = {r["iter"]: r["val_loss"] for r in records(part, "eval")}  # the first part also evaluated at its end, 6
    assert {r["iter"]: r["val_loss"] for r in records(whole, "eval")} == {i: part_evals[i] for i in (0, 4, 8, 10)}
    a, b = load_checkpoint(whole)["model"], load_checkpoint(part)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_saved_only_when_val_improves_unless_always(tiny_data, tmp_path):
    summary = train(tiny_data, tmp_path, always_save_checkpoint=False, learning_rate=0.0, min_lr=0.0)
    assert summary.checkpoint is not None  # the end of a run always saves
    assert math.isfinite(summary.best_val_loss)


def test_resume_with_another_model_shape_names_the_difference(tiny_data, tmp_path):
    train(tiny_data, tmp_path, max_iters=2)
    with pytest.raises(GPTError, match="n_layer: checkpoint 2, this run 3"):
        Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, n_layer=3, init_from="resume"))))


def test_resume_without_checkpoint_is_explained(tiny_data, tmp_path):
    with pytest.raises(GPTError, match="no checkpoint at"):
        Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, init_from="resume"))))


def test_bad_checkpoints_are_explained(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(GPTError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "ckpt.pt")
    with pytest.raises(GPTError, match="not a checkpoint written by launch/train.py"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint_is_explained(tiny_data, tmp_path):
    train(tiny_data, tmp_path, max_iters=2)
    path = tmp_path / "ckpt.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GPTError, match="truncated"):
        load_checkpoint(tmp_path)


def test_failed_save_leaves_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    train(tiny_data, tmp_path, max_iters=2)
    before = (tmp_path / "ckpt.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GPTError, match="No space left on device"):
        save_checkpoint({"model": {}}, tmp_path)
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == ["ckpt-0000002.pt", "ckpt.pt"]


RECIPE = dict(optimizer="muon", muon_lr=0.02, learning_rate=3e-3, lr_schedule="wsd", cooldown_frac=0.5,
              pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True,
              logit_softcap=15.0)


def test_a_resumed_muon_run_repeats_the_uninterrupted_losses_exactly(tiny_data, tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(tiny_data, whole, max_iters=10, lr_decay_iters=10, **RECIPE)
    assert "optimizer: Muon on 8 hidden matrices" in capsys.readouterr().out  # the split, printed at start
    train(tiny_data, part, max_iters=6, lr_decay_iters=10, **RECIPE)
    ckpt = load_checkpoint(part)
    assert ckpt["model_config"]["pos_emb"] == "rope" and ckpt["model_config"]["mlp"] == "relu2"
    assert any("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    train(tiny_data, part, max_iters=10, lr_decay_iters=10, init_from="resume", **RECIPE)
    assert [r["loss"] for r in records(part, "train")] == [r["loss"] for r in records(whole, "train")]
    lrs = [r["lr"] for r in records(whole, "train")]
    assert lrs[2] == lrs[4] == pytest.approx(3e-3) and lrs[9] < lrs[6] < lrs[4]  # wsd: hold, then cool down
    a, b = load_checkpoint(whole)["model"], load_checkpoint(part)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy,why", [("deepspeed", "ZeRO hands a client optimizer flat shards"),
                                          ("fsdp", "FSDP keeps only row shards")])
def test_muon_under_a_sharded_strategy_is_one_clear_error_before_anything_starts(tiny_data, tmp_path, strategy, why):
    with pytest.raises(GPTError, match=rf"--optimizer=muon does not run under --strategy={strategy}: {why}.*"
                                       rf"--strategy=ddp.*keep {strategy} with --optimizer=adamw"):
        build_run(load_config(tiny_argv(tiny_data, tmp_path, optimizer="muon", strategy=strategy)))
    assert not any(tmp_path.iterdir())  # refused before a process group, a model or an output folder
