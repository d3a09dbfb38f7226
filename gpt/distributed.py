"""The process group: who we are (rank, world size, launcher), set-up and teardown.

Launchers announce themselves through the environment: torchrun sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT and TORCHELASTIC_RUN_ID; the deepspeed
launcher sets the same four plus CROSS_RANK (and passes --local_rank). With none
of them we are a single process, rank 0 of 1.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from gpt.errors import GPTError

# --dist_timeout's default: a rank that finishes no step for this long ends the job (gpt/heartbeat.py). Five
# minutes is far above any step, eval batch or checkpoint save of the models this project trains (a 1.5 GB
# nanoGPT-124M checkpoint saves in seconds), and keeps today's 10-minute collective timeout below.
DEFAULT_DIST_TIMEOUT_S = 300.0


def collective_timeout(dist_timeout_s: float) -> datetime.timedelta:
    """How long one collective may wait: twice the heartbeat's timeout.

    The heartbeat must speak first, because it names the rank that hangs and the step it
    finished, while a timed-out gloo or NCCL collective only says that it waited. The
    collective timeout remains the backstop where the heartbeat does not watch: set-up and a
    process's first step (torch.compile makes its length unknowable).
    """
    return datetime.timedelta(seconds=2.0 * dist_timeout_s)


# A collective that waits longer than this means a peer died or hangs: fail instead of waiting forever.
COLLECTIVE_TIMEOUT = collective_timeout(DEFAULT_DIST_TIMEOUT_S)


def attempt_prefix() -> str:
    """The store prefix for this attempt of the job.

    torchrun reuses its store when it restarts a failed job (--max-restarts): without a
    per-attempt prefix, the new ranks can read the dead ranks' addresses (and heartbeats).
    """
    return f"gpt/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or '0'}"


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "none"  # "none", "torchrun" or "deepspeed"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env() -> DistEnv:
    """The launcher's view of this process, validated."""
    env = os.environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return DistEnv()
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise GPTError(f"the launcher's RANK/LOCAL_RANK/WORLD_SIZE are not integers "
                       f"({env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}, {env.get('WORLD_SIZE')!r}).") from None
    if not 0 <= rank < world:
        raise GPTError(f"RANK={rank} is outside WORLD_SIZE={world}: start the job with torchrun or deepspeed, "
                       "which set both consistently.")
    if world > 1 and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise GPTError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: start the job with torchrun "
                       "or the deepspeed launcher, which set them.")
    launcher = "deepspeed" if "CROSS_RANK" in env and "TORCHELASTIC_RUN_ID" not in env else (
        "torchrun" if "TORCHELASTIC_RUN_ID" in env else "none")
    return DistEnv(rank=rank, local_rank=local, world_size=world, launcher=launcher)


def init_process_group(denv: DistEnv, device: torch.device, always: bool = False,
                       dist_timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU. For one process only when `always` (DDP insists).

    Collectives time out after `collective_timeout(dist_timeout_s)`; pass the same
    `dist_timeout_s` to `gpt.heartbeat.Heartbeat.start`.
    """
    if dist.is_initialized() or (denv.world_size == 1 and not always):
        return
    if not dist_timeout_s > 0:
        raise GPTError(f"--dist_timeout={dist_timeout_s} must be a positive number of seconds, e.g. 300.")
    if denv.world_size == 1:
        ensure_single_process_env()
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = collective_timeout(dist_timeout_s)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(attempt_prefix(), store)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout, "store": store,
                              "rank": rank, "world_size": world}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)


def ensure_single_process_env() -> None:
    """DeepSpeed insists on a process group even for one process: describe ourselves as rank 0 of 1."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def rank_device(device: torch.device, denv: DistEnv) -> torch.device:
    """Each rank owns one GPU: cuda:LOCAL_RANK. On CPU all ranks share the device."""
    if device.type != "cuda" or denv.world_size == 1 and denv.launcher == "none":
        return device
    if denv.local_rank >= torch.cuda.device_count():
        raise GPTError(f"LOCAL_RANK={denv.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                       "start at most one process per GPU (--nproc_per_node / --num_gpus).")
    torch.cuda.set_device(denv.local_rank)
    return torch.device("cuda", denv.local_rank)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
