"""Activation checkpointing and in-training HellaSwag across 2 DDP ranks (torchrun, CPU).

The run matches the single process that trains without checkpointing: losses within DDP's
usual tolerance, and the same HellaSwag scores at iteration 0 (identical weights), with 5 items
shared 3 + 2, so the rank with the shorter share keeps the collectives in step.
(ZeRO-3 with activation checkpointing: tests/distributed/test_deepspeed.py, stage 3.)
"""
import json

import pytest

from tests.conftest import tiny_argv
from tests.distributed.launch import assert_close, losses, single_process_run, torchrun

COMMON = dict(dropout=0.0, gradient_accumulation_steps=2, max_iters=4, lr_decay_iters=4, eval_interval=4)
ITEMS = [{"ctx": "ROMEO:", "endings": ["But soft", "thou light", "JULIET", "wherefore art"], "label": 0},
         {"ctx": "O Romeo, Romeo,", "endings": ["wherefore art thou", "ROMEO:", "light", "window"], "label": 0},
         {"ctx": "JULIET:", "endings": ["O Romeo", "But", "soft", "breaks"], "label": 0}]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    path = tmp_path_factory.mktemp("hellaswag") / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS + ITEMS[:2]))  # 5 items: shares of 3 and 2
    return path


@pytest.fixture(scope="module")
def single_run(tiny_data, items, tmp_path_factory):
    return single_process_run(tiny_data, tmp_path_factory.mktemp("single"), {**COMMON, "hellaswag_data": items})


def check_against_single(out_dir, single_run, tol):
    worst = assert_close(losses(out_dir), losses(single_run), tol)
    for key in ("hellaswag_acc", "hellaswag_acc_norm"):
        assert losses(out_dir, "eval", key)[0] == losses(single_run, "eval", key)[0]
    return worst


def test_ddp_with_activation_checkpointing_matches_one_process(tiny_data, items, single_run, tmp_path):
    result = torchrun(tiny_argv(tiny_data, tmp_path, **COMMON, activation_checkpointing=True, hellaswag_data=items))
    assert result.returncode == 0, result.stderr[-3000:]
    worst = check_against_single(tmp_path, single_run, 1e-3)
    print(f"DDP + activation checkpointing vs single, largest loss difference: {worst:.2e}")
