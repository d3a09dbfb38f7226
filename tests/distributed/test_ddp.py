"""DDP under torchrun (gloo, 2 CPU processes): the steps and losses of one process, on any number of ranks,
with activation checkpointing and HellaSwag scored across the ranks. (ZeRO-3 with activation checkpointing:
test_deepspeed.py; FSDP with it: test_fsdp.py.)"""
import json
import shutil
import subprocess
import sys

import pytest

from gpt.build import build_run
from gpt.config import load_config
from gpt.distributed import read_env
from gpt.errors import GPTError
from gpt.strategy import choose_strategy
from gpt.trainer import Trainer
from tests.conftest import REPO, logged, tiny_argv
from tests.distributed.launch import (DIST, LR_CHECKED, VENV_BIN, assert_close, assert_scheduled_lr, free_port, job_env,
                                      ok, rank_records, torchrun, until)

FIRST = {**DIST, "max_iters": 20}  # the two-rank job stops two thirds into the schedule; one process finishes it


HELLASWAG = [{"ctx": "ROMEO:", "endings": ["But soft", "thou light", "JULIET", "wherefore art"], "label": 0},
             {"ctx": "O Romeo, Romeo,", "endings": ["wherefore art thou", "ROMEO:", "light", "window"], "label": 0},
             {"ctx": "JULIET:", "endings": ["O Romeo", "But", "soft", "breaks"], "label": 0}]


@pytest.fixture(scope="module")
def hellaswag_items(tmp_path_factory):
    path = tmp_path_factory.mktemp("hellaswag") / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in HELLASWAG + HELLASWAG[:2]))  # 5: shares of 3 and 2
    return path


@pytest.fixture(scope="module")
def ddp_run(tiny_data, hellaswag_items, tmp_path_factory):
    """The DDP job the tests here check: recomputing each block in the backward (activation checkpointing,
    which changes no number) and scoring HellaSwag at each eval, its 5 items shared 3 + 2 between the ranks
    (the rank with the shorter share keeps the collectives in step)."""
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(["--strategy=ddp", "--activation_checkpointing=True", f"--hellaswag_data={hellaswag_items}",
                       *tiny_argv(tiny_data, out, **FIRST)])
    ok(result)
    return out, result


def test_two_ddp_ranks_take_the_one_process_steps(ddp_run, reference_losses):
    out, result = ddp_run
    assert "strategy ddp, 2 rank(s)" in result.stdout
    ranks = rank_records(out, 2)
    worst = assert_close(logged(out), until(reference_losses(DIST), 19))
    assert_close(logged(out, "val_loss"), until(reference_losses(DIST, "val_loss"), 20))
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the ranks never drift apart
    assert_scheduled_lr(ranks, logged(out, "lr"), DIST)
    assert LR_CHECKED <= {it for it, step in ranks[0]["steps"].items() if step["applied"]}
    print(f"DDP vs one process, largest loss difference over 20 iterations: {worst:.2e}")


def test_hellaswag_shared_between_ranks_scores_what_one_process_scores(ddp_run, tiny_data, hellaswag_items, tmp_path):
    # the same weights at iteration 0: one process scoring all 5 items must find what the 2 ranks found together
    Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, **DIST, hellaswag_data=hellaswag_items,
                                            eval_only=True)))).run()
    for key in ("hellaswag_acc", "hellaswag_acc_norm"):
        assert logged(ddp_run[0], key)[0] == logged(tmp_path, key)[0]
    assert sorted(logged(ddp_run[0], "hellaswag_acc")) == [0, 5, 10, 15, 20]  # scored at every eval


def test_a_run_saved_by_two_ranks_resumes_on_one(ddp_run, tiny_data, reference_losses, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ddp_run[0], out)
    resumed = Trainer(build_run(load_config(tiny_argv(tiny_data, out, **DIST, init_from="resume")))).run()
    assert resumed.iters == 30
    assert_close(logged(out), reference_losses(DIST))


@pytest.mark.long
def test_two_nodes_meet_at_a_c10d_rendezvous(tiny_data, reference_losses, tmp_path):
    """The multi-node path on one machine: two torchrun agents, one rank each, rendezvous on 127.0.0.1."""
    port = free_port()
    cmd = [str(VENV_BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test", "launch/train.py",
           *tiny_argv(tiny_data, tmp_path, **{**DIST, "max_iters": 10})]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "strategy ddp, 2 rank(s)" in outputs[0][0] + outputs[1][0]
    assert_close(logged(tmp_path), until(reference_losses(DIST), 9))


# what each launcher puts in a rank's environment (deepspeed/launcher/launch.py, torch.distributed.run), for
# rank 1 of 2; the real launchers: test_deepspeed.py's launcher job and every torchrun job here
LAUNCHED = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
DEEPSPEED_ENV = {**LAUNCHED, "CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2"}
TORCHRUN_ENV = {**LAUNCHED, "TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}


@pytest.mark.parametrize("env, flags, chosen", [
    ({}, [], "single"),
    (TORCHRUN_ENV, [], "ddp"),
    (DEEPSPEED_ENV, [], "deepspeed"),  # the deepspeed launcher alone selects DeepSpeed, without --zero_stage
    ({}, ["--zero_stage=2"], "deepspeed"),
    (TORCHRUN_ENV, ["--zero_stage=1"], "deepspeed"),
    (DEEPSPEED_ENV, ["--strategy=ddp"], "ddp"),  # asked for by name
], ids=["alone", "torchrun", "deepspeed-launcher", "zero_stage", "torchrun+zero_stage", "deepspeed-launcher+ddp"])
def test_auto_strategy_follows_the_launcher_and_zero_stage(monkeypatch, env, flags, chosen):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CROSS_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert choose_strategy(load_config(flags), read_env()) == chosen


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
