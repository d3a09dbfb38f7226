"""Training runs: outputs a user reads, the steps the optimizer takes, checkpoints, and exact resume."""
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from gpt.build import build_run
from gpt.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from gpt.config import OptimConfig, load_config
from gpt.errors import GPTError
from gpt.optim import lr_at
from gpt.trainer import Trainer
from tests.conftest import logged, tiny_argv
from tests.step_probe import StepProbe


def trainer_for(tiny_data, out_dir, **overrides) -> Trainer:
    return Trainer(build_run(load_config(tiny_argv(tiny_data, out_dir, **overrides))))


def train(tiny_data, out_dir, **overrides):
    return trainer_for(tiny_data, out_dir, **overrides).run()


def records(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def probed(trainer: Trainer) -> StepProbe:
    probe = StepProbe(trainer)
    try:
        trainer.run()
    finally:
        probe.close()
    return probe


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


def test_every_step_uses_the_scheduled_lr_and_the_log_shows_what_the_optimizer_used(tiny_data, tmp_path):
    schedule = dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=4, lr_decay_iters=12)
    probe = probed(trainer_for(tiny_data, tmp_path, max_iters=12, eval_interval=12, **schedule))
    expected = {it: lr_at(it, OptimConfig(**schedule)) for it in range(12)}  # 1: in the warmup, 6: a quarter into the decay
    assert {it: step["lr"] for it, step in probe.steps.items()} == {it: [lr, lr] for it, lr in expected.items()}
    assert logged(tmp_path, "lr") == expected


def test_clipping_bounds_the_gradient_norm_the_optimizer_applies(tiny_data, tmp_path):
    probe = probed(trainer_for(tiny_data, tmp_path, max_iters=4, grad_clip=0.25))
    before = logged(tmp_path, "grad_norm")  # what the console shows: the norm before clipping
    assert min(before.values()) > 0.25  # clipping had work to do at every step
    assert [math.sqrt(step["grad_sq"]) for step in probe.steps.values()] == pytest.approx([0.25] * 4, rel=1e-4)


def scripted_val_losses(trainer: Trainer, val_loss: dict[int, float]) -> None:
    """Evaluations report these val losses (by iteration), so which evals improve is known in advance."""
    evaluate = trainer.evaluate

    def scripted():
        return {**evaluate(), "val": val_loss[trainer.iter_num]}

    trainer.evaluate = scripted


def entries(out_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in out_dir.glob("ckpt-*.pt"))


@pytest.mark.parametrize("always, saved", [(False, [4, 12, 16]), (True, [4, 8, 12, 16])])
def test_checkpoints_are_saved_when_val_improves_unless_always(tiny_data, tmp_path, always, saved):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=16, eval_interval=4, eval_iters=1, keep_last=10,
                          always_save_checkpoint=always)
    scripted_val_losses(trainer, {0: 3.0, 4: 2.0, 8: 2.5, 12: 1.5, 16: 1.8})
    trainer.run()
    assert entries(tmp_path) == saved  # 16: the end of a run always saves
    assert os.path.samefile(tmp_path / "ckpt.pt", tmp_path / "ckpt-0000016.pt")
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "ckpt-0000012.pt")


def test_keep_last_keeps_the_newest_checkpoints_and_the_best(tiny_data, tmp_path):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=16, eval_interval=4, eval_iters=1, keep_last=2)
    scripted_val_losses(trainer, {0: 3.0, 4: 1.0, 8: 2.0, 12: 2.5, 16: 2.2})
    trainer.run()
    assert entries(tmp_path) == [4, 12, 16]
    assert load_checkpoint(tmp_path / "best.pt")["iter_num"] == 4 and load_checkpoint(tmp_path)["iter_num"] == 16


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


def signal_at(trainer: Trainer, it: int, *signals: int) -> None:
    """Send this process `signals` in the middle of step `it`, as a user's Ctrl-C or a scheduler would."""
    step = trainer.step

    def step_and_signal():
        result = step()
        if trainer.iter_num == it + 1:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return result

    trainer.step = step_and_signal


@pytest.fixture
def unhandled_signals():
    """Signals that reach this test's own handlers, not a run's: the list stays empty while a run handles them
    (and a run without handlers fails its test instead of interrupting or terminating pytest)."""
    reached: list[str] = []
    originals = {sig: signal.signal(sig, lambda signum, frame: reached.append(signal.Signals(signum).name))
                 for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield reached
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_saves_and_stops(tiny_data, tmp_path, capsys, unhandled_signals, sig):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=12)
    signal_at(trainer, 5, sig)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert trainer.run().iters == 6
    assert unhandled_signals == []
    assert f"stopping at iter 6 ({sig.name})" in capsys.readouterr().out
    assert load_checkpoint(tmp_path)["iter_num"] == 6
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the run's handlers are gone with it


def test_a_second_ctrl_c_stops_at_once_without_saving(tiny_data, tmp_path, unhandled_signals):
    trainer = trainer_for(tiny_data, tmp_path, max_iters=12)
    signal_at(trainer, 5, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert unhandled_signals == []
    assert load_checkpoint(tmp_path)["iter_num"] == 4  # the eval save before; nothing after the second Ctrl-C


def test_time_limit_stops_before_the_deadline_with_a_checkpoint(tiny_data, tmp_path, capsys):
    limit_s = 8.0  # the loop keeps 5 s + two steps + a save and a half in hand
    start = time.monotonic()
    summary = train(tiny_data, tmp_path, max_iters=10**6, lr_decay_iters=10**6, eval_interval=10**6,
                    time_limit=f"{limit_s}s")
    assert time.monotonic() - start < limit_s
    assert "time_limit" in capsys.readouterr().out
    assert 0 < summary.iters < 10**6 and load_checkpoint(tmp_path)["iter_num"] == summary.iters


def test_bfloat16_training_computes_in_bf16_and_tracks_float32(tiny_data, tmp_path):
    args = dict(max_iters=4, eval_interval=4, dropout=0.0)
    train(tiny_data, tmp_path / "fp32", **args)
    trainer = trainer_for(tiny_data, tmp_path / "bf16", dtype="bfloat16", **args)
    dtypes = set()
    trainer.built.model.lm_head.register_forward_hook(lambda module, inputs, out: dtypes.add(out.dtype))
    trainer.run()
    assert dtypes == {torch.bfloat16}  # train and eval forwards ran under bf16 autocast
    fp32, bf16 = logged(tmp_path / "fp32"), logged(tmp_path / "bf16")
    assert bf16 != fp32 and list(bf16.values()) == pytest.approx(list(fp32.values()), rel=2e-2)
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "bf16")["model"].values())


def test_compiled_training_gives_the_eager_losses_and_a_plain_checkpoint(tiny_data, tmp_path, monkeypatch):
    # the benchmark test's cache, and its model: the training graph compiles once per machine
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt" / "inductor-tests"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    args = dict(max_iters=3, eval_interval=3, eval_iters=1, dropout=0.0, n_layer=1, learning_rate=3e-3, warmup_iters=0)
    train(tiny_data, tmp_path / "eager", **args)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(tiny_data, tmp_path / "compiled", compile=True, **args)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the training and the eval forward
    for key in ("loss", "val_loss"):
        eager, compiled = logged(tmp_path / "eager", key), logged(tmp_path / "compiled", key)
        assert list(compiled.values()) == pytest.approx(list(eager.values()), rel=1e-4)
    model_from_checkpoint(load_checkpoint(tmp_path / "compiled"))  # the plain model's names, no _orig_mod.


def test_resume_with_another_model_shape_names_the_difference(tiny_data, tmp_path):
    train(tiny_data, tmp_path, max_iters=2)
    with pytest.raises(GPTError, match="n_layer: checkpoint 2, this run 3"):
        trainer_for(tiny_data, tmp_path, n_layer=3, init_from="resume")


def test_resume_without_checkpoint_is_explained(tiny_data, tmp_path):
    with pytest.raises(GPTError, match="no checkpoint at"):
        trainer_for(tiny_data, tmp_path, init_from="resume")


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
