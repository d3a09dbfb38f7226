"""Where `auto` may run our Triton kernels on a CUDA GPU: a pure decision, no GPU needed.

Triton's interpreter accepts programs that a real GPU compile rejects or runs badly, and
on a CUDA machine the first user is the first to compile our kernels. So `auto` takes a
kernel only where `python -m kernels.gpu_compile` (make gpu-compile) has compiled it: a
compute capability in CHECKED_TARGETS, a dtype the GPU has, a size the launcher's table
covers, and tiles whose shared memory fits the device. Everything else runs the torch
reference, and the decision says why in one line for the run's log:

    attention: triton (sm_90, bf16, head dim 64: fwd 128x64 w8 s3, bwd 128x32 w8 s3, 64 KiB of 227 KiB)
    layernorm: torch (sm_75 (T4, RTX 20xx) is not compile-checked; checked: sm_80, sm_89, sm_90)

`decide(op, capability, dtype, size, max_shared)` is cached, so dispatch may call it per
call; `decide_for(op, tensor, size)` reads the capability and shared memory of the
tensor's device first. The check enumerates what it compiles from the constants here
and from the launchers' own tables, so the two cannot disagree.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Union

import torch

from gpt.errors import GPTError
from kernels.runtime import device_capability, max_shared_memory

# the modules, not the package's same-named public ops that kernels/__init__.py puts in their place
_ce = importlib.import_module("kernels.cross_entropy")
_fa = importlib.import_module("kernels.flash_attention")
_ln = importlib.import_module("kernels.layernorm")
_rms = importlib.import_module("kernels.rmsnorm")
_rope = importlib.import_module("kernels.rope")

KIB = 1024
Tiles = Union[_fa.AttentionTiles, _ln.LayerNormTiles, _ce.CrossEntropyTiles, _rope.RopeTiles]


@dataclass(frozen=True)
class Target:
    """A GPU architecture the compile check builds for, and the shared memory one block may use there."""
    capability: tuple[int, int]
    gpus: str
    max_shared: int  # bytes: the opt-in maximum per block (cudaDevAttrMaxSharedMemoryPerBlockOptin)

    @property
    def name(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


CHECKED_TARGETS: tuple[Target, ...] = (
    Target((8, 0), "A100", 163 * KIB),
    Target((8, 9), "L4, RTX 4090", 99 * KIB),
    Target((9, 0), "H100, H200", 227 * KIB),
)
_CHECKED = {t.capability: t for t in CHECKED_TARGETS}
TARGET_NAMES = tuple(t.name for t in CHECKED_TARGETS)
# Names for the log line only, so that "sm_75" also says which GPU that is.
_KNOWN_GPUS = {(6, 0): "P100", (6, 1): "GTX 10xx, P40", (7, 0): "V100", (7, 5): "T4, RTX 20xx",
               (8, 6): "RTX 30xx, A10, A40", (8, 7): "Jetson Orin", (10, 0): "B200", (12, 0): "RTX 50xx"}

OPS = ("attention", "layernorm", "cross_entropy", "linear_cross_entropy", "rmsnorm", "rope")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

# Attention head dims `auto` sends to the kernel. BLOCK_D pads a head dim to a power of two (16, 32, 64,
# 128), and the check compiles each of those buckets at its power of two and at a head dim that is not one
# (24, 48, 96: the masked-dims path), so every head dim in the range is in a checked bucket. Below 16 the
# kernel would pad to 16 too, but no such head dim is compiled: they take the torch reference.
ATTENTION_HEAD_DIMS = (16, 128)
ATTENTION_CHECKED_HEAD_DIMS = (16, 24, 32, 48, 64, 96, 128)
# fp32 attention takes torch's SDPA: the kernel has no GPU tiles for it (see GPU_TILES in flash_attention.py).
ATTENTION_TRITON_DTYPES = _fa.GPU_DTYPES
# RoPE's kernel compiles once per head dim (half of it is a constexpr, the loop bound over pairs), so `auto`
# takes it only at the head dims the check compiles: the attention check's, which cover GPT shapes.
ROPE_HEAD_DIMS = ATTENTION_CHECKED_HEAD_DIMS


@dataclass(frozen=True)
class Decision:
    """What `auto` runs for one op on one GPU: our kernel with `tiles`, or the torch reference, and why."""
    op: str
    use_triton: bool
    tiles: Tiles | None
    reason: str

    def line(self) -> str:
        """One line for the run's log: 'attention: triton (...)' or 'layernorm: torch (...)'."""
        return f"{self.op}: {'triton' if self.use_triton else 'torch'} ({self.reason})"


def target_name(capability: tuple[int, int]) -> str:
    """'sm_90 (H100, H200)': the architecture and the GPUs that have it, where known."""
    known = _CHECKED[capability].gpus if capability in _CHECKED else _KNOWN_GPUS.get(capability)
    name = f"sm_{capability[0]}{capability[1]}"
    return f"{name} ({known})" if known else name


def gpu_tiles(op: str, dtype: torch.dtype, size: int, max_shared: int) -> Tiles | None:
    """The tiles the op's launcher takes on a GPU with `max_shared` bytes a block, or None when none fit."""
    if op == "attention":
        return _fa.gpu_tiles(size, dtype, max_shared)
    if op == "layernorm":
        tiles = _ln.gpu_tiles(size)
    elif op == "rmsnorm":
        tiles = _rms.gpu_tiles(size)
    elif op == "rope":
        tiles = _rope.gpu_tiles(size)
    else:
        tiles = _ce.gpu_tiles(size)
    return tiles if tiles is not None and tiles.shared_kib * KIB <= max_shared else None


def _torch(op: str, reason: str) -> Decision:
    return Decision(op, False, None, reason)


def _size_problem(op: str, dtype: torch.dtype, size: int) -> str | None:
    if op == "attention":
        if dtype not in ATTENTION_TRITON_DTYPES:
            return "fp32 attention runs torch's SDPA: our kernel's exact-fp32 dots have no GPU tiles"
        lo, hi = ATTENTION_HEAD_DIMS
        if not lo <= size <= hi:
            return f"head dim {size}: the kernel is compile-checked for head dims {lo}-{hi}"
    elif op in ("layernorm", "rmsnorm"):
        limit = _ln.GPU_AUTO_MAX_N if op == "layernorm" else _rms.GPU_AUTO_MAX_N
        if not 1 <= size <= limit:
            return f"rows of {size}: the kernel spills registers above {limit}"
    elif op == "rope":
        if size not in ROPE_HEAD_DIMS:
            return f"head dim {size}: the kernel is compile-checked for head dims {', '.join(map(str, ROPE_HEAD_DIMS))}"
    elif size < 1:
        return f"vocabulary of {size}"
    return None


@functools.lru_cache(maxsize=None)
def decide(op: str, capability: tuple[int, int], dtype: torch.dtype, size: int, max_shared: int) -> Decision:
    """Our kernel or torch for `op` on a GPU of `capability` with `max_shared` bytes of shared memory a block.

    `size` is what picks the op's tiles: the head dim (attention, rope), the row width (layernorm,
    rmsnorm), the vocabulary (cross_entropy, linear_cross_entropy).
    """
    if op not in OPS:
        raise GPTError(f"gpu_support.decide: op={op!r} is not one of {', '.join(OPS)}.")
    capability = tuple(capability)
    if dtype not in DTYPES:
        return _torch(op, f"{dtype} is not a kernel dtype (fp16, bf16, fp32)")
    if dtype == torch.bfloat16 and capability < (8, 0):
        return _torch(op, f"bf16 needs sm_80 or newer; this GPU is {target_name(capability)}")
    if capability not in _CHECKED:
        checked = ", ".join(t.name for t in CHECKED_TARGETS)
        return _torch(op, f"{target_name(capability)} is not compile-checked; checked: {checked}")
    problem = _size_problem(op, dtype, size)
    if problem:
        return _torch(op, problem)
    where = f"sm_{capability[0]}{capability[1]}, {_SHORT[dtype]}"
    what = {"attention": "head dim", "rope": "head dim", "layernorm": "rows of", "rmsnorm": "rows of"}.get(op, "vocabulary")
    tiles = gpu_tiles(op, dtype, size, max_shared)
    if tiles is None:
        return _torch(op, f"{where}, {what} {size}: no tiles fit {max_shared // KIB} KiB of shared memory")
    return Decision(op, True, tiles, f"{where}, {what} {size}: {tiles.label()}, "
                                     f"{tiles.shared_kib} KiB of {max_shared // KIB} KiB")


def decide_on(op: str, device: torch.device, dtype: torch.dtype, size: int) -> Decision:
    """`decide` for a CUDA device (its capability and shared memory are read once)."""
    return decide(op, device_capability(device), dtype, size, max_shared_memory(device))


def decide_for(op: str, tensor: torch.Tensor, size: int) -> Decision:
    """`decide` for a CUDA tensor's device and dtype."""
    return decide_on(op, tensor.device, tensor.dtype, size)
