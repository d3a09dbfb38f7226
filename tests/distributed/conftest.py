"""Fixtures shared by the distributed tests: FSDP's 2-rank run, which test_fsdp checks and test_resharding resumes."""
import pytest

from tests.conftest import tiny_argv
from tests.distributed.launch import free_port, ok, torchrun

# 20 iterations with a checkpoint every 5; gradient accumulation is global (2 ranks x 4 micro-batches = 8)
FSDP_RUN = dict(dropout=0.0, max_iters=20, lr_decay_iters=20, eval_interval=5, gradient_accumulation_steps=8)


@pytest.fixture
def one_process_group(monkeypatch):
    """FSDP needs a process group even for one process in this one: describe it as rank 0 of 1."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def fsdp_two_ranks(tiny_data, tmp_path_factory):
    """FSDP_RUN on 2 ranks, resharding after every micro-batch, every checkpoint kept."""
    out = tmp_path_factory.mktemp("fsdp2")
    result = torchrun(["--strategy=fsdp", "--fsdp_accumulation=sharded", *tiny_argv(tiny_data, out, **FSDP_RUN, keep_last=4)])
    ok(result)
    assert "weights and gradients resharded after each" in result.stdout
    return out
