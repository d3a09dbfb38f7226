"""Fused LayerNorm in Triton: one read of x forward, one read of (x, dy) backward.

Math, per row x of length N (statistics in fp32):

    mu = mean(x),  rstd = 1 / sqrt(mean((x - mu)^2) + eps),  xhat = (x - mu) * rstd
    y = xhat * w + b

Backward, with g = dy * w:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat,  db = sum over rows of dy

The forward saves only mu and rstd (two floats a row), not xhat. Each backward
program walks a contiguous range of rows, writes their dx, and keeps running
fp32 partial sums of dw and db in registers; the (programs, N) partials are
summed once at the end, so there are no atomics and the result is deterministic.
Any last dimension up to MAX_N works (non-powers of two are masked).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

from gpt.errors import GPTError
from kernels.runtime import INTERPRETER

MAX_N = 65536  # one row must fit one block of registers


@triton.jit
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, M, N, stride_x, stride_y, eps,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding must not enter the variance
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _ln_bwd_kernel(X, W, DY, DX, MEAN, RSTD, DW_PART, DB_PART, M, N, stride_x, stride_dy, stride_dx, rows_per_prog,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_N], tl.float32)
    first = pid * rows_per_prog
    last = tl.minimum(first + rows_per_prog, M)
    for start in range(first, last, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < last
        mask = rmask[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c_g = tl.sum(g, 1) / N
        c_gx = tl.sum(g * xhat, 1) / N
        dx = (g - c_g[:, None] - xhat * c_gx[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
        db += tl.sum(dy, 0)
    tl.store(DW_PART + pid * N + cols, dw, mask=cmask)
    tl.store(DB_PART + pid * N + cols, db, mask=cmask)


# ---------------------------------------------------------------- launchers

@dataclass(frozen=True)
class LayerNormTiles:
    """One launch configuration: rows and columns a program's tile covers, and its warps."""
    block_m: int
    block_n: int
    warps: int

    @property
    def shared_kib(self) -> int:
        """An upper bound on the shared memory a block needs (the reductions' scratch: `make gpu-compile`
        measured 2-4 KiB up to 4096 columns, then a byte a column, 32 KiB at 65536), checked by
        kernels/gpu_compile.py on every compile-checked GPU."""
        return max(4, self.block_n // 1024)

    def label(self) -> str:
        return f"{self.block_m}x{self.block_n} w{self.warps}"


# On a GPU a tile holds ~4K elements (one row when rows are wider) over enough warps that each thread
# keeps 8-32 of them (64 at 65536 columns: 32 warps is a block's most). Rows are padded to at least 512
# columns, which keeps the compiled variants few (eight cover every width up to MAX_N), at the cost of idle
# lanes for narrower rows.
GPU_MIN_BLOCK_N = 512
# `auto` stops here: the backward keeps x, dy, xhat, g and the dw/db partial sums of a row in registers,
# and ptxas spills above it. `make gpu-compile` at 12288 columns (the 16384 tile, 16 warps): 272-368
# bytes a thread in fp16/bf16 and 1276-2084 in fp32 on sm_80/89/90; at 6144 (the 8192 tile) none.
# Wider rows still run here with impl='triton'.
GPU_AUTO_MAX_N = 8192


def gpu_tiles(n: int) -> LayerNormTiles | None:
    """The GPU tiles for rows of `n` columns, or None when the kernel does not take rows that wide."""
    if not 1 <= n <= MAX_N:
        return None
    block_n = max(GPU_MIN_BLOCK_N, triton.next_power_of_2(n))
    block_m = max(1, 4096 // block_n)
    return LayerNormTiles(block_m, block_n, warps=min(32, max(4, block_m * block_n // 1024)))


def gpu_tile_table() -> tuple[LayerNormTiles, ...]:
    """Every tile gpu_tiles can return: what kernels/gpu_compile.py compiles."""
    widths = [GPU_MIN_BLOCK_N << i for i in range((MAX_N // GPU_MIN_BLOCK_N).bit_length())]
    return tuple(gpu_tiles(n) for n in widths)


def _interpreter_tiles(n: int) -> LayerNormTiles:
    # few, large programs: each costs ~13 ms under the interpreter whatever it does
    block_n = triton.next_power_of_2(n)
    block_m = max(1, min(64, 16384 // block_n))
    return LayerNormTiles(block_m, block_n, warps=4)


def launch_tiles(x2d: torch.Tensor, block_m: int | None, tiles: LayerNormTiles | None,
                 op: str = "layer_norm") -> LayerNormTiles:
    """The tiles a row-norm launch uses (LayerNorm's and RMSNorm's): given, or the interpreter's, or the GPU's."""
    n = x2d.size(1)
    if tiles is None:
        tiles = _interpreter_tiles(n) if INTERPRETER or not x2d.is_cuda else gpu_tiles(n)
    if tiles is None:
        raise GPTError(f"{op}'s kernel takes a last dim from 1 to {MAX_N}; got {n}. Use impl='torch'.")
    return replace(tiles, block_m=block_m) if block_m else tiles


def backward_grid(x2d: torch.Tensor, block_m: int, programs: int | None) -> tuple[int, int]:
    """(programs, rows each walks) for a row-norm backward: enough programs to fill the GPU, one per tile
    of rows under the interpreter at most; each walks whole tiles, so its partial sums cover its rows."""
    M = x2d.size(0)
    if programs is None:
        sms = torch.cuda.get_device_properties(x2d.device).multi_processor_count if x2d.is_cuda else 1
        programs = max(1, min(triton.cdiv(M, block_m), 4 * sms))
    rows_per_prog = triton.cdiv(triton.cdiv(M, programs), block_m) * block_m
    return triton.cdiv(M, rows_per_prog), rows_per_prog


def layer_norm_forward(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
                       block_m: int | None = None, tiles: LayerNormTiles | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward on (M, N) rows: returns y (M, N) in x's dtype, and fp32 mean and rstd (M,)."""
    M, N = x2d.shape
    tiles = launch_tiles(x2d, block_m, tiles)
    y = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    mean = torch.empty(M, device=x2d.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x2d.device, dtype=torch.float32)
    _ln_fwd_kernel[(triton.cdiv(M, tiles.block_m),)](x2d, weight, weight if bias is None else bias, y, mean, rstd,
                                                     M, N, x2d.stride(0), y.stride(0), eps, HAS_BIAS=bias is not None,
                                                     BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                                                     num_warps=tiles.warps)
    return y, mean, rstd


def layer_norm_backward(dy: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, programs: int | None = None, block_m: int | None = None,
                        tiles: LayerNormTiles | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: dx (M, N) in x's dtype, dw and db (N,) in weight's dtype."""
    M, N = x2d.shape
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    tiles = launch_tiles(x2d, block_m, tiles)
    bm = tiles.block_m
    programs, rows_per_prog = backward_grid(x2d, bm, programs)
    dx = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    dw_part = torch.empty((programs, N), device=x2d.device, dtype=torch.float32)
    db_part = torch.empty((programs, N), device=x2d.device, dtype=torch.float32)
    _ln_bwd_kernel[(programs,)](x2d, weight, dy, dx, mean, rstd, dw_part, db_part, M, N, x2d.stride(0), dy.stride(0),
                                dx.stride(0), rows_per_prog, BLOCK_M=bm, BLOCK_N=tiles.block_n,
                                num_warps=tiles.warps)
    return dx, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(weight.dtype)


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op("gpt_kernels::layer_norm_fwd", mutates_args=())
def _fwd_op(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_forward(x2d, weight, bias, eps)


@_fwd_op.register_fake
def _(x2d, weight, bias, eps):
    m = x2d.size(0)
    return (x2d.new_empty(x2d.shape), x2d.new_empty(m, dtype=torch.float32), x2d.new_empty(m, dtype=torch.float32))


@torch.library.custom_op("gpt_kernels::layer_norm_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
            rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_backward(dy, x2d, weight, mean, rstd)


@_bwd_op.register_fake
def _(dy, x2d, weight, mean, rstd):
    return x2d.new_empty(x2d.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x2d, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x2d, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, dmean, drstd):
    x2d, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _bwd_op(dy, x2d, weight, mean, rstd)
    return dx, dw, db if ctx.has_bias else None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- the op

def input_problem(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> str | None:
    """Why the kernel cannot take these inputs, or None when it can (impl='auto' then runs torch's op)."""
    n = x.size(-1) if x.dim() else 0
    if weight.shape != (n,) or (bias is not None and bias.shape != (n,)):
        return (f"layer_norm: weight and bias must have shape ({n},) to match x's last dim; got "
                f"{tuple(weight.shape)} and {None if bias is None else tuple(bias.shape)}.")
    if not 1 <= n <= MAX_N:
        return f"layer_norm's kernel takes a last dim from 1 to {MAX_N}; got {n}. Use impl='torch'."
    return None


def layer_norm_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim of x (any leading shape) through our kernels."""
    problem = input_problem(x, weight, bias)
    if problem:
        raise GPTError(problem)
    x2d = x.reshape(-1, x.size(-1))
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    y, _, _ = _fwd_op(x2d, weight, bias, float(eps))
    return y.view(x.shape)
