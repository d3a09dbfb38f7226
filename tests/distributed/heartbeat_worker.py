"""Run under torchrun by tests/distributed/test_heartbeat.py: a fake training loop with the heartbeat.

Each step reads "data" (a sleep), computes a little, then all-reduces, so the ranks are as
synchronous as under DDP; it beats where the trainer does. Rank 0 prints a progress line
per step (with the straggler note) and saves the step reached every --save_every steps;
every rank resumes from that save, as the trainer does when torchrun restarts a job.

Faults the tests inject: --slow_rank's data reads take --slow_x times longer; --stuck_rank's
read of step --stuck_at never returns in the job's first attempt (its threads live on, as in
a stuck file system read). Each rank writes its pid to OUT/pid_rank<R>.attempt<A>, so a
test can SIGSTOP one.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


from gpt.atomic import write_text_atomic  # noqa: E402
from gpt.distributed import all_gather_objects, init_process_group, read_env, shutdown  # noqa: E402
from gpt.heartbeat import Heartbeat  # noqa: E402
from gpt.straggler import straggler_note  # noqa: E402


def read_batch(args: argparse.Namespace, rank: int, step: int, attempt: int) -> None:
    if rank == args.stuck_rank and step == args.stuck_at and attempt == 0:
        print(f"rank {rank}: the data read of step {step} is stuck", flush=True)
        while True:  # the main thread never returns; the heartbeat thread lives on
            time.sleep(1.0)
    time.sleep(args.step_s * (args.slow_x if rank == args.slow_rank else 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dist_timeout", type=float, default=3.0)
    parser.add_argument("--step_s", type=float, default=0.05)
    parser.add_argument("--save_every", type=int, default=5)
    parser.add_argument("--slow_rank", type=int, default=-1)
    parser.add_argument("--slow_x", type=float, default=1.0)
    parser.add_argument("--stuck_rank", type=int, default=-1)
    parser.add_argument("--stuck_at", type=int, default=-1)
    args = parser.parse_args()

    denv = read_env()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    (args.out_dir / f"pid_rank{denv.rank}.attempt{attempt}").write_text(str(os.getpid()))
    init_process_group(denv, torch.device("cpu"), always=True, dist_timeout_s=args.dist_timeout)
    ckpt = args.out_dir / "ckpt.json"
    start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    if denv.is_main and start:
        print(f"resuming from step {start} (attempt {attempt})", flush=True)
    weights = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    heartbeat = Heartbeat.start(denv, args.dist_timeout)
    try:
        for it in range(start, args.steps):
            t0 = time.perf_counter()
            read_batch(args, denv.rank, it, attempt)
            heartbeat.beat()
            grad = torch.tanh(weights @ weights).sum().reshape(1)
            local_s = time.perf_counter() - t0
            dist.all_reduce(grad)
            heartbeat.beat(it)
            note = straggler_note(all_gather_objects(local_s))
            if denv.is_main:
                print(f"iter {it}: local {local_s * 1000:.1f} ms" + (f", {note}" if note else ""), flush=True)
                if (it + 1) % args.save_every == 0:
                    write_text_atomic(ckpt, json.dumps({"step": it + 1}))
        if denv.is_main:
            write_text_atomic(args.out_dir / "done.json", json.dumps({"step": args.steps, "attempt": attempt}))
    finally:
        heartbeat.stop()
        shutdown()


if __name__ == "__main__":
    main()
