"""Fused RMSNorm in Triton: one read of x forward, one read of (x, dy) backward.

Math, per row x of length N (statistics in fp32):

    rstd = 1 / sqrt(mean(x^2) + eps),  xhat = x * rstd,  y = xhat * w

Backward, with g = dy * w:

    dx = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat

It is LayerNorm without the mean and the bias (kernels/layernorm.py has the same
layout): the forward saves only rstd, one float a row; each backward program
walks a contiguous range of rows, writes their dx and keeps an fp32 partial sum
of dw in registers; the (programs, N) partials are summed once at the end, so
there are no atomics and the result is deterministic.

Memory, at (8192 rows, 768) in bf16 (one such tensor is 12 MiB): RMSNorm written
in torch ops, `(x.float() * rsqrt(mean(x.float()^2) + eps)).to(bf16) * w`, keeps
the fp32 upcast (24 MiB) and the normalised bf16 rows (12 MiB) for its backward,
besides x; this kernel keeps x (which the caller holds anyway) and 32 KiB of
rstd: 36 MiB less per norm. A GPT-2 124M shape with QK-norm normalises 49 such
tensors a step (two per block, its queries and keys, the final norm): ~1.7 GiB.
Any last dimension up to MAX_N works (non-powers of two are masked).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpt.errors import GPTError

# GPU_AUTO_MAX_N, gpu_tiles and gpu_tile_table are re-exported: RMSNorm runs on LayerNorm's tiles and width limit
from kernels.layernorm import (  # noqa: F401
    GPU_AUTO_MAX_N,
    LayerNormTiles,
    backward_grid,
    gpu_tile_table,
    gpu_tiles,
    launch_tiles,
)

MAX_N = 65536  # one row must fit one block of registers


@triton.jit
def _rms_fwd_kernel(X, W, Y, RSTD, M, N, stride_x, stride_y, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) / N + eps)  # masked columns load 0 and add nothing
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _rms_bwd_kernel(X, W, DY, DX, RSTD, DW_PART, M, N, stride_x, stride_dy, stride_dx, rows_per_prog,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    first = pid * rows_per_prog
    last = tl.minimum(first + rows_per_prog, M)
    for start in range(first, last, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < last
        mask = rmask[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        c_gx = tl.sum(g * xhat, 1) / N
        dx = (g - xhat * c_gx[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
    tl.store(DW_PART + pid * N + cols, dw, mask=cmask)


# ---------------------------------------------------------------- launchers

# The GPU tiles are LayerNorm's (`gpu_tiles`, `gpu_tile_table`, GPU_AUTO_MAX_N from kernels/layernorm.py),
# read through this module by kernels/gpu_support.py and gpu_matrix.py: the same row layout with one
# statistic and one partial sum fewer, so its shared-memory bound and the width where ptxas starts spilling
# hold here too. The full GPU matrix's 288 RMSNorm compiles (sm_80/89/90, fp16/bf16/fp32) checked it: at
# most 32 KiB of shared memory; no spill up to 8192 columns except the fp32 backward at an unaligned width
# on the 4096 tile (16-28 bytes a thread on sm_89/sm_90); from the 16384 tile up, 136-3550 bytes.


def rms_norm_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float, block_m: int | None = None,
                     tiles: LayerNormTiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on (M, N) rows: returns y (M, N) in x's dtype and the fp32 rstd (M,)."""
    M, N = x2d.shape
    tiles = launch_tiles(x2d, block_m, tiles, "rms_norm")
    bm, bn, warps = tiles.block_m, tiles.block_n, tiles.warps
    y = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    rstd = torch.empty(M, device=x2d.device, dtype=torch.float32)
    _rms_fwd_kernel[(triton.cdiv(M, bm),)](x2d, weight, y, rstd, M, N, x2d.stride(0), y.stride(0), eps,
                                           BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    return y, rstd


def rms_norm_backward(dy: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                      programs: int | None = None, block_m: int | None = None,
                      tiles: LayerNormTiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward: dx (M, N) in x's dtype and dw (N,) in weight's dtype."""
    M, N = x2d.shape
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    tiles = launch_tiles(x2d, block_m, tiles, "rms_norm")
    bm, bn, warps = tiles.block_m, tiles.block_n, tiles.warps
    programs, rows_per_prog = backward_grid(x2d, bm, programs)
    dx = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    dw_part = torch.empty((programs, N), device=x2d.device, dtype=torch.float32)
    _rms_bwd_kernel[(programs,)](x2d, weight, dy, dx, rstd, dw_part, M, N, x2d.stride(0), dy.stride(0), dx.stride(0),
                                 rows_per_prog, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    return dx, dw_part.sum(0).to(weight.dtype)


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op("gpt_kernels::rms_norm_fwd", mutates_args=())
def _fwd_op(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_forward(x2d, weight, eps)


@_fwd_op.register_fake
def _(x2d, weight, eps):
    return x2d.new_empty(x2d.shape), x2d.new_empty(x2d.size(0), dtype=torch.float32)


@torch.library.custom_op("gpt_kernels::rms_norm_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor,
            rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_backward(dy, x2d, weight, rstd)


@_bwd_op.register_fake
def _(dy, x2d, weight, rstd):
    return x2d.new_empty(x2d.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x2d, weight, eps = inputs
    ctx.save_for_backward(x2d, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, drstd):
    x2d, weight, rstd = ctx.saved_tensors
    dx, dw = _bwd_op(dy, x2d, weight, rstd)
    return dx, dw, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- the op

def input_problem(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs, or None when it can (impl='auto' then runs torch's op)."""
    n = x.size(-1) if x.dim() else 0
    if weight.shape != (n,):
        return f"rms_norm: weight must have shape ({n},) to match x's last dim; got {tuple(weight.shape)}."
    if not 1 <= n <= MAX_N:
        return f"rms_norm's kernel takes a last dim from 1 to {MAX_N}; got {n}. Use impl='torch'."
    return None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape) through our kernels."""
    problem = input_problem(x, weight)
    if problem:
        raise GPTError(problem)
    x2d = x.reshape(-1, x.size(-1))
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    y, _ = _fwd_op(x2d, weight, float(eps))
    return y.view(x.shape)
