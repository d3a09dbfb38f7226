"""launch/train.py with probes, run by the distributed tests under torchrun or the deepspeed launcher.

Trains like launch/train.py (same flags, same exit codes), and writes <out_dir>/steps_rank<R>.json:
what each optimizer step applied on this rank (tests/step_probe.py) and a digest of this rank's
final weights. Faults, from the environment:
  TEST_NAN_AT=3,7   the last rank's training loss is NaN at these iterations
  TEST_DIE_AT=13    the last rank kills itself (SIGKILL) at the start of this iteration, on the
                    launcher's first attempt only (a restarted job then runs through)
  TEST_SIGTERM_AT=7 the last rank sends itself SIGTERM at the start of this iteration, as a
                    scheduler would (real delivery to a real process, at a known iteration)
"""
import json
import os
import signal
from pathlib import Path

from gpt.build import build_run
from gpt.cli import run_main
from gpt.config import load_config
from gpt.trainer import Trainer
from tests.step_probe import StepProbe, poison_loss, weights_digest


def iters(name: str) -> set[int]:
    return {int(i) for i in os.environ.get(name, "").split(",") if i}


def main(argv: list[str]) -> None:
    run = build_run(load_config(argv))
    trainer = Trainer(run)
    last_rank = run.denv.rank == run.denv.world_size - 1
    if last_rank:
        poison_loss(trainer, iters("TEST_NAN_AT"))
    probe = StepProbe(trainer)
    die_at = iters("TEST_DIE_AT") if last_rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" else set()
    term_at = iters("TEST_SIGTERM_AT") if last_rank else set()
    step = trainer.step

    def step_or_die():
        if trainer.iter_num in die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if trainer.iter_num in term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return step()

    trainer.step = step_or_die
    try:
        trainer.run()
    finally:
        record = {"steps": probe.steps, "weights": weights_digest(trainer), "world_size": run.denv.world_size}
        Path(run.cfg.train.out_dir, f"steps_rank{run.denv.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run_main(main)
