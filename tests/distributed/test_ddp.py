"""DDP under torchrun (gloo, 2 CPU processes): the same tokens and losses as one process."""
import json
import subprocess
import sys

import pytest

from gpt.build import build_run
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.trainer import Trainer
from tests.conftest import REPO, tiny_argv
from tests.distributed.launch import VENV_BIN, assert_close, free_port, job_env, losses, reference_run, torchrun

COMMON = dict(dropout=0.0, gradient_accumulation_steps=4, max_iters=20, lr_decay_iters=20, eval_interval=10)


@pytest.fixture(scope="module")
def single_run(tiny_data, tmp_path_factory):
    return reference_run(tiny_data, tmp_path_factory, COMMON)


def test_two_ddp_ranks_match_one_process_and_stay_identical(tiny_data, single_run, tmp_path):
    result = torchrun(["--strategy=ddp", *tiny_argv(tiny_data, tmp_path, **COMMON)], script="tests/distributed/ddp_worker.py")
    assert result.returncode == 0, result.stderr[-3000:]
    worst = assert_close(losses(tmp_path), losses(single_run), 1e-3)
    assert_close(losses(tmp_path, "eval", "val_loss"), losses(single_run, "eval", "val_loss"), 1e-3)
    ranks = [json.loads((tmp_path / f"params_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    print(f"DDP vs single, largest per-iteration loss difference over 20 iterations: {worst:.2e}")


def test_a_run_saved_by_two_ranks_resumes_on_one(tiny_data, single_run, tmp_path):
    first = torchrun(tiny_argv(tiny_data, tmp_path, **{**COMMON, "max_iters": 12}))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, **COMMON, init_from="resume")))).run()
    assert resumed.iters == 20
    assert_close(losses(tmp_path), losses(single_run), 1e-3)


def test_two_nodes_meet_at_a_c10d_rendezvous(tiny_data, single_run, tmp_path):
    """The multi-node path on one machine: two torchrun agents, one rank each, rendezvous on 127.0.0.1."""
    port = free_port()
    cmd = [str(VENV_BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test", "launch/train.py",
           *tiny_argv(tiny_data, tmp_path, **COMMON)]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert_close(losses(tmp_path), losses(single_run), 1e-3)


def test_indivisible_accumulation_is_a_clear_error(tiny_data, tmp_path):
    result = torchrun(tiny_argv(tiny_data, tmp_path, gradient_accumulation_steps=3))
    assert result.returncode != 0
    assert "gradient_accumulation_steps=3" in result.stderr and "divisible by the world size 2" in result.stderr
    # the only traceback is torchrun's own report of a failed child, not one from our ranks
    assert result.stderr.count("Traceback") == result.stderr.count('bin/torchrun", line')


@pytest.mark.parametrize("flags, words", [
    (["--strategy=fsdp2"], ["--strategy='fsdp2'", "ddp", "fsdp", "deepspeed"]),
    (["--fsdp_accumulation=sharded", "--strategy=ddp"], ["--fsdp_accumulation", "--strategy=fsdp"]),
    (["--zero_stage=4"], ["--zero_stage=4", "0, 1, 2 or 3"]),
    (["--zero_stage=2", "--strategy=ddp"], ["--zero_stage", "--strategy=deepspeed"]),
])
def test_strategy_misuse_is_explained(flags, words):
    with pytest.raises(GPTError) as err:
        load_config(flags)
    for word in words:
        assert word in str(err.value)


def test_missing_deepspeed_says_how_to_install_or_use_ddp(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` fail
    with pytest.raises(GPTError, match=r"pip install deepspeed.*torchrun --nproc_per_node=N launch/train.py --strategy=ddp"):
        Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, strategy="deepspeed"))))
