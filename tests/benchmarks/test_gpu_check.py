"""The GPU acceptance script runs its stages end to end (on CPU, at toy sizes), so a GPU session is not spent on its bugs."""
from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check
from gpt.errors import GPTError
from tests.conftest import TINY_TEXT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny corpus under the name the shakespeare stage trains on."""
    from data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("gpu-check-data")
    (root / "plays.txt").write_text(TINY_TEXT)
    prepare(PrepareConfig(dataset="shakespeare_char", input=str(root / "plays.txt"), data_dir=str(root)))
    return root


@pytest.mark.long  # every stage at toy sizes, DDP included
def test_every_cpu_stage_runs_and_reports(data_dir, tmp_path, capsys):
    out = tmp_path / "report"
    gpu_check.main(["--smoke=True", f"--out={out}", f"--data_dir={data_dir}", "--stages=kernels,shakespeare,gpt2,distributed",
                    "--shakespeare_iters=3", "--gpt2_steps=2", "--dist_iters=4", "--dist_runs=single,ddp"])
    report = json.loads((out / "gpu-check.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert all(s["ok"] for s in stages.values()), {k: s["note"] for k, s in stages.items()}
    assert "no CUDA" in stages["kernels"]["note"]
    variants = stages["shakespeare"]["results"]["variants"]
    assert set(variants) == {"torch"}
    assert all(v["projected_5000_s"] > 5000 * v["ms_per_iter"] / 1e3 for v in variants.values())  # evals counted
    assert set(stages["gpt2"]["results"]["variants"]) == {"logits", "fused_linear_loss", "activation_checkpointing"}
    ddp = stages["distributed"]["results"]["ddp"]
    assert ddp["within_tol"] and ddp["max_loss_diff"] < 1e-5  # fp32 on CPU: DDP over one rank is one process
    markdown = (out / "gpu-check.md").read_text()
    assert "| torch |" in markdown and "| fused_linear_loss |" in markdown and "| ddp |" in markdown


def test_unknown_stages_are_named():
    with pytest.raises(GPTError, match="unknown stage"):
        gpu_check.main(["--stages=tests,warp"])
