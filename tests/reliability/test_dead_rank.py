"""A rank dies mid-run: torchrun restarts the job, which resumes from its checkpoint on its own."""
import pytest

from gpt.checkpoint import load_checkpoint
from tests.conftest import logged, tiny_argv
from tests.distributed.launch import DIST, assert_close, ok, rank_records, torchrun


@pytest.mark.long  # a 30-step job and its restart: `make test-long`
def test_a_killed_rank_is_restarted_and_the_job_repeats_the_uninterrupted_steps(tiny_data, reference_losses, tmp_path):
    # rank 1 is killed at iteration 13 of the first attempt; the restarted job resumes from the checkpoint at 10
    result = torchrun(tiny_argv(tiny_data, tmp_path, **DIST), launcher_args=("--max-restarts=1",),
                      env={"TEST_DIE_AT": "13"})
    ok(result)
    assert "torchrun restarted this job: resuming from" in result.stdout
    assert rank_records(tmp_path, 2)[1]["steps"].keys() == set(range(10, 30))  # the second attempt's steps
    assert load_checkpoint(tmp_path)["iter_num"] == 30
    assert_close(logged(tmp_path), reference_losses(DIST))  # every iteration, those before and after the restart
