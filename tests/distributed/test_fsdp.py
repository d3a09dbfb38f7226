"""FSDP2 (--strategy=fsdp) on CPU over gloo: the losses of one process, exact resume, DCP checkpoints, a sharded build.

The runs that change the world size are in test_resharding.py; they start from this module's 2-rank run.
"""
import json

import pytest
import torch
import torch.nn as nn

from data.dataset import open_dataset
from data.loader import BatchLoader
from gpt.build import build_run
from gpt.checkpoint import entry_name, load_checkpoint, model_from_checkpoint, save_sharded_checkpoint
from gpt.config import load_config
from gpt.distributed import DistEnv
from gpt.errors import GPTError
from gpt.strategy import choose_strategy
from gpt.strategy.fsdp import FSDPStrategy
from gpt.strategy.sharded_init import ShardedInit
from gpt.trainer import Trainer
from tests.conftest import logged, tiny_argv
from tests.distributed.conftest import FSDP_RUN
from tests.distributed.launch import assert_close, assert_scheduled_lr, ok, rank_records, torchrun
from tests.launch.test_bad_inputs import entry

@pytest.mark.parametrize("per_rank", [pytest.param(1, marks=pytest.mark.long), 4])
def test_fsdp_losses_match_one_process(tiny_data, reference_losses, tmp_path, fsdp_two_ranks, per_rank):
    """20 iterations on 2 ranks: with 4 micro-batches per rank (resharding after each), and with one (and
    activation checkpointing, which recomputes each block in the backward: the same losses)."""
    flags = {**FSDP_RUN, "gradient_accumulation_steps": 2 * per_rank}
    if per_rank == 4:
        out = fsdp_two_ranks
    else:
        out = tmp_path
        result = torchrun(["--strategy=fsdp", "--activation_checkpointing=True", *tiny_argv(tiny_data, out, **flags)])
        ok(result)
    ranks = rank_records(out, 2)
    worst = assert_close(logged(out), reference_losses(flags))
    assert_scheduled_lr(ranks, logged(out, "lr"), flags)
    assert_close(logged(out, "val_loss"), reference_losses(flags, "val_loss"))
    print(f"FSDP (2 ranks, {per_rank} micro-batch(es) each) vs one process, largest loss difference over 20 "
          f"iterations: {worst:.2e}")


def test_fsdp_resumes_exactly_and_exports_for_sampling(tiny_data, tmp_path, one_process_group):
    """Dropout on, so the RNG streams matter too: stopped at 4 and resumed, the losses are the uninterrupted ones
    bit for bit. The DCP folder reads as a plain checkpoint (sampler, exporter) without a process group."""
    flags = dict(strategy="fsdp", dropout=0.1, gradient_accumulation_steps=2, max_iters=8)
    whole = tmp_path / "whole"
    Trainer(build_run(load_config(tiny_argv(tiny_data, whole, **flags)))).run()
    split = tmp_path / "split"
    Trainer(build_run(load_config(tiny_argv(tiny_data, split, **{**flags, "max_iters": 4})))).run()
    assert (split / "latest").read_text() == entry_name(4) and (split / entry_name(4) / ".metadata").is_file()
    Trainer(build_run(load_config(tiny_argv(tiny_data, split, **flags, init_from="resume")))).run()
    assert logged(split) == logged(whole)
    assert logged(split, "val_loss") == logged(whole, "val_loss")
    assert sorted(p.name for p in split.glob("ckpt-*")) == [entry_name(8)]  # keep_last=1: ckpt-4 went

    plain = load_checkpoint(split)
    model = model_from_checkpoint(plain).eval()
    loader = BatchLoader(open_dataset(tiny_data, "tiny"), 16, 4, 1, seed=1337)
    with torch.no_grad():
        val = sum(model(*loader.eval_batch("val", k))[1].item() for k in range(2)) / 2
    assert val == pytest.approx(logged(split, "val_loss")[8], abs=1e-6)
    entry("launch/sample.py")([f"--out_dir={split}", f"--output_dir={tmp_path / 's'}", "--num_samples=1",
                               "--max_new_tokens=10", "--start=ROMEO:"])
    assert (tmp_path / "s" / "sample_001.txt").read_text().startswith("ROMEO:")
    entry("launch/export_checkpoint.py")([f"--out_dir={split}", f"--output_dir={tmp_path / 'plain'}"])
    assert torch.equal(load_checkpoint(tmp_path / "plain")["model"]["lm_head.weight"], plain["model"]["lm_head.weight"])

    with pytest.raises(GPTError, match="written by --strategy=fsdp.*Resume it with --strategy=fsdp"):
        build_run(load_config(tiny_argv(tiny_data, split, max_iters=10, init_from="resume")))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, no group: as meant
def test_a_dcp_checkpoint_appears_only_when_complete(tmp_path, monkeypatch):
    """A write that fails leaves `latest` on the previous checkpoint and no half entry; the next save clears it."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(4.0)}}
    trainer = {"model_config": {}, "tokenizer": {}, "config": {}}
    save_sharded_checkpoint(state, {**trainer, "iter_num": 1}, tmp_path, keep_last=1, best=True, is_main=True)
    real_save = dcp.save

    def dies_mid_write(state_dict, checkpoint_id):
        real_save(state_dict, checkpoint_id=checkpoint_id)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "save", dies_mid_write)
    with pytest.raises(GPTError, match="No space left on device.*previous checkpoint is untouched"):
        save_sharded_checkpoint(state, {**trainer, "iter_num": 2}, tmp_path, keep_last=1, best=False, is_main=True)
    assert (tmp_path / "latest").read_text() == entry_name(1) and not (tmp_path / entry_name(2)).exists()
    monkeypatch.setattr(dcp, "save", real_save)
    save_sharded_checkpoint(state, {**trainer, "iter_num": 3}, tmp_path, keep_last=1, best=False, is_main=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", entry_name(1), entry_name(3), "latest"]


def test_a_sharded_build_draws_what_a_plain_build_draws_and_refuses_what_it_cannot_follow():
    placeholder = nn.Parameter(torch.empty(6, 4, device="meta"))
    kept = {}
    with ShardedInit(lambda t: t.shape if t is placeholder else None, lambda t, full: kept.update(full=full.clone())):
        torch.manual_seed(0)
        nn.init.kaiming_uniform_(placeholder, a=5 ** 0.5)
        placeholder.normal_(0.0, 0.02)
        with pytest.raises(GPTError, match="mul_.*overwrite the whole tensor"):
            placeholder.mul_(2.0)
    torch.manual_seed(0)
    plain = torch.empty(6, 4)
    nn.init.kaiming_uniform_(plain, a=5 ** 0.5)
    assert torch.equal(kept["full"], plain.normal_(0.0, 0.02))


@pytest.mark.long
def test_no_rank_holds_the_whole_model_while_fsdp_or_zero3_builds_it(tmp_path):
    """Peak resident memory added by each build, per rank of 2, at 25M parameters (101 MB): a sharded build stays
    well under the model's size, a plain build reaches it (so the measure can fail); the weights are the plain
    build's, and whole weights given afterwards (a pretrained snapshot) land in each rank's shards."""
    pytest.importorskip("deepspeed")
    result = torchrun([str(tmp_path)], script="tests/distributed/build_memory_worker.py",
                      env={"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"build_memory_rank{rank}.json").read_text())
        size = r["model_bytes"]
        assert r["plain"] >= 0.95 * size, r
        assert r["fsdp"] <= 0.7 * size and r["zero3"] <= 0.75 * size, r
        assert r["fsdp_same_weights"] and r["zero3_same_weights"], r
        assert r["fsdp_loads_weights"] and r["zero3_loads_weights"], r
        print(f"rank {rank}: peak memory added by the build, as a share of the model's {size / 2**20:.0f} MiB: "
              f"FSDP {r['fsdp'] / size:.2f}, ZeRO-3 {r['zero3'] / size:.2f}, plain {r['plain'] / size:.2f}")


def test_fsdp_refuses_fp16_and_is_never_picked_by_auto():
    with pytest.raises(GPTError, match="float32 or bfloat16, not float16"):
        FSDPStrategy(DistEnv(), torch.device("cpu"), torch.float16, local_accum=1, grad_clip=1.0)
    assert choose_strategy(load_config(["--strategy=auto"]), DistEnv(world_size=4, launcher="torchrun")) == "ddp"
    assert choose_strategy(load_config(["--strategy=fsdp"]), DistEnv()) == "fsdp"


def test_fsdp_finetunes_from_a_pretrained_snapshot(offline_gpt2, gpt2_data, tmp_path, one_process_group):
    """--init_from=<snapshot> under FSDP: the same losses as one process starting from the same snapshot."""
    flags = dict(dataset="tinygpt2", init_from=str(offline_gpt2[1]), max_iters=3, eval_interval=3, dropout=0.0)
    Trainer(build_run(load_config(tiny_argv(gpt2_data, tmp_path / "single", **flags)))).run()
    Trainer(build_run(load_config(tiny_argv(gpt2_data, tmp_path / "fsdp", strategy="fsdp", **flags)))).run()
    assert_close(logged(tmp_path / "fsdp"), logged(tmp_path / "single"), 1e-6)
