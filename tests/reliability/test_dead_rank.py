"""A rank dies mid-run: torchrun restarts the job, which resumes from its checkpoint on its own."""
import os
import signal
import sys
from pathlib import Path

from gpt.checkpoint import load_checkpoint
from tests.conftest import REPO, tiny_argv
from tests.reliability.runs import logged_iters, start, train, train_losses, wait_for

RUN = dict(max_iters=80, lr_decay_iters=80, eval_interval=10, dropout=0.0, gradient_accumulation_steps=2,
           n_embd=64, batch_size=8, block_size=32, always_save_checkpoint=True)


def workers_of(agent_pid: int) -> list[int]:
    """The training processes torchrun started (its children running launch/train.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent_pid and b"launch/train.py" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_killed_rank_is_restarted_and_the_job_ends_as_if_undisturbed(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    assert train(tiny_argv(tiny_data, reference, **RUN)).returncode == 0
    out = tmp_path / "job"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                str(REPO / "launch/train.py"), *tiny_argv(tiny_data, out, **RUN)]
    log = tmp_path / "torchrun.log"
    agent = start([], cmd=torchrun, log=log)
    assert wait_for(lambda: (out / "ckpt.pt").exists() and logged_iters(out) > 35, agent, poll=0.01)
    victims = workers_of(agent.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    agent.wait(timeout=240)
    output = log.read_text()
    assert agent.returncode == 0, output[-3000:]
    assert "torchrun restarted this job: resuming from" in output
    assert load_checkpoint(out)["iter_num"] == 80
    final = max(train_losses(reference))
    assert abs(train_losses(out)[final] - train_losses(reference)[final]) < 1e-4
    assert sorted(train_losses(out)) == sorted(train_losses(reference))  # no iteration lost or repeated in the log
