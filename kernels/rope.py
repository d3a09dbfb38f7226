"""Rotary position embeddings (RoPE) in Triton, applied to q and k beside the attention kernel.

Math (Su et al., "RoFormer"; the rotate-half layout of GPT-NeoX and Llama): a
head vector x of size D is D/2 pairs (x1_i, x2_i) = (x_i, x_{i + D/2}); at
absolute position p pair i turns by the angle p * theta_i, theta_i = base^(-2i/D):

    y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin

so q_p . k_s depends on p - s only. The rotation is orthogonal, so the backward
is the rotation by minus the angle (dx1 = dy1 cos + dy2 sin, dx2 = dy2 cos -
dy1 sin): the same kernel with sin negated, and nothing is saved for it but the
cos and sin tables, which the caller holds anyway.

The tables are (T, D/2) fp32, one row per position of x, computed by the caller for
whatever absolute positions it asks (gpt/model.py `rope_tables`): the kernel never
assumes positions 0..T-1, so a KV cache can rotate new keys at any position
before storing them. x is (B, T, H, D), the layout right after the q/k/v
projection; any strides with a contiguous last dim; the output is contiguous.

Memory and traffic, at q of (8, 1024, 12, 64) in bf16 (12 MiB): rotate-half in
torch ops, `x * cos + cat(-x2, x1) * sin`, makes a half-size negation and three
x-sized temporaries (the cat, the two products) before the sum: 42 MiB transient
and ~132 MiB read and written per tensor; this kernel reads x once and writes y
once (24 MiB), with no temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpt.errors import GPTError
from kernels.runtime import INTERPRETER

MAX_HEAD_DIM = 1024


@triton.jit
def _rope_kernel(X, COS, SIN, Y, R, T, H, sxb, sxt, sxh, sign,
                 HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # a row is one (b, t, h) head vector
    cols = tl.arange(0, BLOCK_H)
    rmask = rows < R
    mask = rmask[:, None] & (cols < HALF)[None, :]
    rows64 = rows.to(tl.int64)
    h = rows64 % H
    t = (rows64 // H) % T
    b = rows64 // (H * T)
    x_row = X + b * sxb + t * sxt + h * sxh
    x1 = tl.load(x_row[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row[:, None] + HALF + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    c = tl.load(COS + t[:, None] * HALF + cols[None, :], mask=mask, other=0.0)
    s = tl.load(SIN + t[:, None] * HALF + cols[None, :], mask=mask, other=0.0) * sign
    y_row = Y + rows64 * (2 * HALF)
    tl.store(y_row[:, None] + cols[None, :], (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(y_row[:, None] + HALF + cols[None, :], (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launcher

@dataclass(frozen=True)
class RopeTiles:
    """One launch configuration: head vectors (rows) and pairs (columns) a program covers, and its warps."""
    block_r: int
    block_h: int
    warps: int

    @property
    def shared_kib(self) -> int:
        """An upper bound on a block's shared memory: the kernel has no dot and no reduction, but a head
        dim whose half is not a power of two (24: 12 pairs in a 16-wide tile) makes triton stage 4 KiB for
        a layout conversion; the others use none (every rope compile of the full GPU matrix, sm_80/89/90,
        fp16/bf16/fp32, head dims 16-128); the compile check holds every compiled head dim to this bound."""
        return 4

    def label(self) -> str:
        return f"{self.block_r}x{self.block_h} w{self.warps}"


def gpu_tiles(head_dim: int) -> RopeTiles | None:
    """The GPU tiles for heads of `head_dim` (~2K pairs a program, four warps), or None when not taken."""
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        return None
    block_h = triton.next_power_of_2(head_dim // 2)
    return RopeTiles(max(1, min(256, 2048 // block_h)), block_h, 4)


def _launch_tiles(x: torch.Tensor, block_r: int | None, tiles: RopeTiles | None) -> RopeTiles:
    head_dim = x.size(-1)
    if tiles is None:
        if INTERPRETER or not x.is_cuda:  # few, large programs: each costs ~13 ms under the interpreter
            block_h = triton.next_power_of_2(head_dim // 2)
            tiles = RopeTiles(max(1, min(256, 16384 // block_h)), block_h, 4)
        else:
            tiles = gpu_tiles(head_dim)
    if tiles is None:
        raise GPTError(f"rope's kernel takes an even head size from 2 to {MAX_HEAD_DIM}; got {head_dim}. "
                       "Use impl='torch'.")
    return RopeTiles(block_r, tiles.block_h, tiles.warps) if block_r else tiles


def rope_forward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False,
                 block_r: int | None = None, tiles: RopeTiles | None = None) -> torch.Tensor:
    """Launch the rotation of x (B, T, H, D) by the (T, D/2) tables; `inverse` turns the other way."""
    B, T, H, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    tiles = _launch_tiles(x, block_r, tiles)
    br, bh, warps = tiles.block_r, tiles.block_h, tiles.warps
    y = torch.empty((B, T, H, D), device=x.device, dtype=x.dtype)
    rows = B * T * H
    _rope_kernel[(triton.cdiv(rows, br),)](x, cos, sin, y, rows, T, H, x.stride(0), x.stride(1), x.stride(2),
                                           -1.0 if inverse else 1.0, HALF=D // 2, BLOCK_R=br, BLOCK_H=bh,
                                           num_warps=warps)
    return y


# ---------------------------------------------------------------- custom op

@torch.library.custom_op("gpt_kernels::rope", mutates_args=())
def _rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    return rope_forward(x, cos, sin, inverse)


@_rope_op.register_fake
def _(x, cos, sin, inverse):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, cos, sin, inverse = inputs
    ctx.save_for_backward(cos, sin)
    ctx.inverse = inverse


def _backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    return _rope_op(dy, cos, sin, not ctx.inverse), None, None, None


_rope_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- the op

def input_problem(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs, or None when it can (impl='auto' then runs torch's op)."""
    if x.dim() != 4:
        return f"rope: x must be (B, T, H, D); got shape {tuple(x.shape)}."
    _, T, _, D = x.shape
    if D % 2 or not 2 <= D <= MAX_HEAD_DIM:
        return f"rope's kernel takes an even head size from 2 to {MAX_HEAD_DIM}; got {D}. Use impl='torch'."
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (T, D // 2) or table.dtype != torch.float32 or not table.is_contiguous():
            return (f"rope: {name} must be a contiguous fp32 table of shape ({T}, {D // 2}), one row per position "
                    f"of x; got {tuple(table.shape)} {table.dtype}.")
    return None


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) by the (T, D/2) cos and sin tables through our kernel."""
    problem = input_problem(x, cos, sin)
    if problem:
        raise GPTError(problem)
    return _rope_op(x, cos, sin, False)
