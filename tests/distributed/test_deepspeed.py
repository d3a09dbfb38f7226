"""DeepSpeed ZeRO 0-3 on 2 CPU ranks (gloo): the one-process steps, skipped bad steps, resume, export, sample
(ZeRO-3 resumed on one rank here; ZeRO-2 across world sizes, and a conversion that cannot be done: test_resharding.py).

Each job carries a NaN loss on its last rank at one iteration: where the engine skips such a step
(ZeRO-1/2/3, and bf16 at ZeRO-0) the job must repeat, loss for loss, the one-process run that
skipped the same step; under ZeRO-0 in fp32 it must stop before the step. The jobs run under
torchrun (a launch takes half the time of the deepspeed launcher's here), except the one that
checks that the deepspeed launcher alone selects DeepSpeed.
"""
import pytest
import torch

from data.dataset import open_dataset
from data.loader import BatchLoader
from gpt.checkpoint import folder_client_state, load_checkpoint, model_from_checkpoint
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.strategy.deepspeed_config import resolve_ds_config
from tests.conftest import logged, tiny_argv
from tests.distributed.launch import (DIST, LR_CHECKED, assert_close, assert_scheduled_lr, deepspeed, fork, ok,
                                      one_process, rank_records, torchrun, until)
from tests.launch.test_bad_inputs import entry

pytest.importorskip("deepspeed")
RUN = {**DIST, "max_iters": 10}
CONVERTING = "converting it to a DeepSpeed universal checkpoint"


def assert_skipped(ranks: list[dict], it: int, printed: str) -> None:
    """Step `it` was reported, counted as skipped, and left every rank's weights as they were."""
    assert f"iter {it}: non-finite gradients" in printed and "step skipped (1 in a row" in printed
    assert all(not r["steps"][it]["applied"] and not r["steps"][it]["changed"] for r in ranks)
    assert all(r["steps"][it + 1]["applied"] and r["steps"][it + 1]["changed"] for r in ranks)


def val_loss_of_export(tiny_data, out_dir, eval_iters: int = 2) -> float:
    """The val loss of the plain weights reassembled from the run's checkpoint, on the trainer's own eval batches."""
    model = model_from_checkpoint(load_checkpoint(out_dir)).eval()
    loader = BatchLoader(open_dataset(tiny_data, "tiny"), 16, 4, 1, seed=1337)
    with torch.no_grad():
        return sum(model(*loader.eval_batch("val", k))[1].item() for k in range(eval_iters)) / eval_iters


@pytest.mark.long
def test_the_deepspeed_launcher_picks_deepspeed_and_a_zero2_job_resumes_and_skips_a_nan_step(
        tiny_data, reference_losses, tmp_path):
    # no --strategy, no --zero_stage: the launcher selects DeepSpeed, ds_config.json the stage (2)
    first = deepspeed(tiny_argv(tiny_data, tmp_path, **{**RUN, "max_iters": 5}))
    ok(first)
    assert "strategy deepspeed, 2 rank(s)" in first.stdout and folder_client_state(tmp_path)["zero_stage"] == 2
    rank_records(tmp_path, 2)
    second = torchrun(["--strategy=deepspeed", *tiny_argv(tiny_data, tmp_path, **RUN, init_from="resume")],
                      env={"TEST_NAN_AT": "7"})
    ok(second)
    assert "resuming from" in second.stdout and CONVERTING not in second.stdout  # same world size: as saved
    ranks = rank_records(tmp_path, 2)
    assert_skipped(ranks, 7, second.stdout)
    worst = assert_close(logged(tmp_path), until(reference_losses(DIST, nan_at=(7,)), 9))
    assert_scheduled_lr(ranks, logged(tmp_path, "lr"), DIST)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-0000010"]  # superseded entries are removed
    assert (tmp_path / "best").read_text() == "ckpt-0000010"
    print(f"ZeRO-2 (saved at 5, resumed) vs one process, largest loss difference: {worst:.2e}")


def check_zero_job(tiny_data, reference_losses, out, capsys, stage: int, *flags: str) -> None:
    """A 2-rank ZeRO job of RUN whose last rank's loss is NaN at iteration 3: it takes the one-process steps
    (the NaN step skipped) at the scheduled lr, and its shards reassemble into plain weights that sample and
    export."""
    result = torchrun(["--strategy=deepspeed", f"--zero_stage={stage}", *tiny_argv(tiny_data, out, **RUN), *flags],
                      env={"TEST_NAN_AT": "3"})
    ok(result)
    ranks = rank_records(out, 2)
    assert_skipped(ranks, 3, result.stdout)
    worst = assert_close(logged(out), until(reference_losses(DIST, nan_at=(3,)), 9))
    assert_close(logged(out, "val_loss"), until(reference_losses(DIST, "val_loss", nan_at=(3,)), 10))
    assert_scheduled_lr(ranks, logged(out, "lr"), DIST)
    assert LR_CHECKED <= {it for it, step in ranks[0]["steps"].items() if step["applied"]}
    # the plain weights reassembled from the shards give the run's own final val loss; sample and export read them
    assert val_loss_of_export(tiny_data, out) == pytest.approx(logged(out, "val_loss")[10], abs=1e-6)
    run_main(entry("launch/sample.py"), [f"--out_dir={out}", f"--output_dir={out / 's'}", "--num_samples=1",
                                         "--max_new_tokens=20", "--start=ROMEO:"])
    assert "sample 1/1" in capsys.readouterr().out
    print(f"ZeRO-{stage} vs one process, largest loss difference over 10 iterations: {worst:.2e}")
    run_main(entry("launch/export_checkpoint.py"), [f"--out_dir={out}", f"--output_dir={out / 'plain'}"])
    plain = load_checkpoint(out / "plain")
    assert plain["iter_num"] == 10
    assert torch.equal(plain["model"]["lm_head.weight"], load_checkpoint(out)["model"]["lm_head.weight"])


def test_zero1_takes_the_one_process_steps_skips_a_nan_step_and_exports(tiny_data, reference_losses, tmp_path,
                                                                         capsys):
    check_zero_job(tiny_data, reference_losses, tmp_path, capsys, 1)


@pytest.mark.long
def test_zero3_takes_the_one_process_steps_skips_a_nan_step_exports_and_resumes_on_one_rank(
        tiny_data, reference_losses, tmp_path, capsys):
    # ZeRO-3 also recomputes each block in the backward (activation checkpointing): still the one process's losses
    flags = ("--activation_checkpointing=True", "--keep_last=2")
    check_zero_job(tiny_data, reference_losses, tmp_path, capsys, 3, *flags)
    # the checkpoint of iteration 5, resumed on one rank: converted to DeepSpeed's universal form on the way
    one = fork(tmp_path, tmp_path / "one", 5)
    fewer = one_process(["--strategy=deepspeed", "--zero_stage=3", *tiny_argv(tiny_data, one, **RUN), *flags,
                         "--init_from=resume"])
    ok(fewer)
    assert f"saved by 2 rank(s) with ZeRO-3; {CONVERTING}" in fewer.stdout
    rank_records(one, 1)
    worst = assert_close(logged(one), until(reference_losses(DIST, nan_at=(3,)), 9))
    print(f"ZeRO-3 resumed 2->1 at 5 vs one process, largest loss difference: {worst:.2e}")


def test_zero0_in_one_process_takes_the_one_process_steps_and_stops_before_a_nan_step(tiny_data, reference_losses,
                                                                                     tmp_path):
    """`python launch/train.py --zero_stage=0`: DeepSpeed in one process, no launcher. ZeRO-0 in fp32 would
    apply a NaN step (every weight NaN), so the run stops before it, its last checkpoint intact."""
    result = one_process([*tiny_argv(tiny_data, tmp_path, **RUN), "--zero_stage=0"], env={"TEST_NAN_AT": "8"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "strategy deepspeed, 1 rank(s)" in result.stdout
    assert "gradients became NaN/Inf" in result.stderr and "ZeRO-0 in float32" in result.stderr
    assert "--zero_stage=1" in result.stderr and "Traceback" not in result.stderr
    ranks = rank_records(tmp_path, 1)
    assert not ranks[0]["steps"].get(8, {}).get("changed", False)
    assert_close(logged(tmp_path), until(reference_losses(DIST), 7))
    assert_scheduled_lr(ranks, logged(tmp_path, "lr"), DIST)
    assert load_checkpoint(tmp_path)["iter_num"] == 5
    assert val_loss_of_export(tiny_data, tmp_path) == pytest.approx(logged(tmp_path, "val_loss")[5], abs=1e-6)


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


@pytest.mark.parametrize("saved, asked, resumes", [(2, 2, True), (2, 1, True), (1, 2, True), (2, 3, False),
                                                   (3, 2, False), (0, 2, False), (1, 0, False), (3, 3, True)])
def test_a_zero_checkpoint_resumes_only_across_stages_deepspeed_can_load(saved, asked, resumes):
    # measured: ZeRO-2 -> ZeRO-1 repeats the uninterrupted losses; ZeRO-2 -> ZeRO-3 fails inside DeepSpeed
    from gpt.strategy.deepspeed import zero_stage_change_problem
    problem = zero_stage_change_problem(saved, asked)
    assert (problem is None) == resumes
    if not resumes:
        assert f"ZeRO-{saved}" in problem and f"--zero_stage={saved}" in problem
