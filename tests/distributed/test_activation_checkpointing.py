"""Activation checkpointing and in-training HellaSwag across 2 DDP ranks (torchrun, CPU).

The run matches the single process that trains without checkpointing: losses within DDP's
usual tolerance, and the same HellaSwag scores at iteration 0 (identical weights), with 5 items
shared 3 + 2, so the rank with the shorter share keeps the collectives in step.
(ZeRO-3 with activation checkpointing: tests/distributed/test_deepspeed.py, stage 3.)
"""
import json

import pytest

from tests.conftest import logged, tiny_argv
from tests.distributed.launch import assert_close, ok, rank_records, torchrun

COMMON = dict(dropout=0.0, gradient_accumulation_steps=2, max_iters=4, lr_decay_iters=4, eval_interval=4)
ITEMS = [{"ctx": "ROMEO:", "endings": ["But soft", "thou light", "JULIET", "wherefore art"], "label": 0},
         {"ctx": "O Romeo, Romeo,", "endings": ["wherefore art thou", "ROMEO:", "light", "window"], "label": 0},
         {"ctx": "JULIET:", "endings": ["O Romeo", "But", "soft", "breaks"], "label": 0}]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    path = tmp_path_factory.mktemp("hellaswag") / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS + ITEMS[:2]))  # 5 items: shares of 3 and 2
    return path


def test_ddp_with_activation_checkpointing_matches_one_process(tiny_data, items, reference_losses, tmp_path):
    result = torchrun(tiny_argv(tiny_data, tmp_path, **COMMON, activation_checkpointing=True, hellaswag_data=items))
    ok(result)
    rank_records(tmp_path, 2)
    single = {**COMMON, "hellaswag_data": items}
    worst = assert_close(logged(tmp_path), reference_losses(single))
    for key in ("hellaswag_acc", "hellaswag_acc_norm"):
        assert logged(tmp_path, key)[0] == reference_losses(single, key)[0]
    print(f"DDP + activation checkpointing vs single, largest loss difference: {worst:.2e}")
