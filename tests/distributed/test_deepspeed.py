"""DeepSpeed ZeRO 0-3 under the deepspeed launcher (2 CPU processes, gloo): same losses, export, sample (resuming on other world sizes: test_resharding.py)."""
import pytest
import torch

from data.dataset import open_dataset
from data.loader import BatchLoader
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.errors import GPTError
from gpt.strategy.deepspeed_config import resolve_ds_config
from tests.conftest import run_script, tiny_argv
from tests.distributed.launch import assert_close, deepspeed, losses, reference_run

pytest.importorskip("deepspeed")
COMMON = dict(dropout=0.0, gradient_accumulation_steps=2, max_iters=10, lr_decay_iters=10, eval_interval=5)


@pytest.fixture(scope="module")
def single_run(tiny_data, tmp_path_factory):
    return reference_run(tiny_data, tmp_path_factory, COMMON)


def final_val_loss_of_export(tiny_data, out_dir, eval_iters: int = 2) -> float:
    """The val loss of the exported plain weights on the trainer's own eval batches."""
    ckpt = load_checkpoint(out_dir)
    model = model_from_checkpoint(ckpt).eval()
    loader = BatchLoader(open_dataset(tiny_data, "tiny"), 16, 4, 1, seed=1337)
    with torch.no_grad():
        return sum(model(*loader.eval_batch("val", k))[1].item() for k in range(eval_iters)) / eval_iters


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_stage_tracks_one_process_and_exports_for_sampling(tiny_data, single_run, tmp_path, stage):
    # ZeRO-3 also recomputes each block in the backward (activation checkpointing): still the single process's losses
    extra = ["--activation_checkpointing=True"] if stage == 3 else []
    result = deepspeed([*tiny_argv(tiny_data, tmp_path, **COMMON), f"--zero_stage={stage}", *extra])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    worst = assert_close(losses(tmp_path), losses(single_run), 5e-3)
    print(f"ZeRO-{stage} vs single, largest loss difference over 10 iterations: {worst:.2e}")
    assert (tmp_path / "latest").is_file()
    # the plain weights reassembled from the shards give the run's own final val loss
    assert final_val_loss_of_export(tiny_data, tmp_path) == pytest.approx(losses(tmp_path, "eval", "val_loss")[10], abs=1e-5)
    sampled = run_script("launch/sample.py", f"--out_dir={tmp_path}", f"--output_dir={tmp_path / 's'}",
                         "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert "sample 1/1" in sampled.stdout
    exported = run_script("launch/export_checkpoint.py", f"--out_dir={tmp_path}", f"--output_dir={tmp_path / 'plain'}")
    assert exported.returncode == 0, exported.stderr[-2000:]
    plain = load_checkpoint(tmp_path / "plain")
    assert plain["iter_num"] == 10 and torch.equal(plain["model"]["lm_head.weight"], load_checkpoint(tmp_path)["model"]["lm_head.weight"])


def test_single_process_zero0_without_a_launcher(tiny_data, single_run, tmp_path):
    """`python launch/train.py --strategy=deepspeed`: DeepSpeed in one process, no launcher needed."""
    result = run_script("launch/train.py", *tiny_argv(tiny_data, tmp_path, **COMMON), "--zero_stage=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy deepspeed, 1 rank(s)" in result.stdout
    assert_close(losses(tmp_path), losses(single_run), 5e-3)
    assert final_val_loss_of_export(tiny_data, tmp_path) == pytest.approx(losses(tmp_path, "eval", "val_loss")[10], abs=1e-5)


def test_ds_config_auto_fields_come_from_the_training_config():
    cfg = resolve_ds_config({"gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"},
                             "zero_optimization": {"stage": 2}}, "ds_config.json", micro_batch=12, local_accum=4,
                            world_size=2, grad_clip=1.0, dtype=torch.bfloat16, zero_stage=3)
    assert cfg["train_micro_batch_size_per_gpu"] == 12 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 96 and cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert cfg["zero_optimization"]["stage"] == 3  # --zero_stage overrides the file


def test_ds_config_that_disagrees_with_the_training_config_is_refused():
    with pytest.raises(GPTError, match=r"gradient_accumulation_steps=8.*\"auto\""):
        resolve_ds_config({"gradient_accumulation_steps": 8}, "ds_config.json", micro_batch=12, local_accum=4,
                          world_size=2, grad_clip=1.0, dtype=torch.float32, zero_stage=None)
