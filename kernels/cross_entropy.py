"""Fused cross-entropy in Triton, and a linear + cross-entropy that never holds the full logits.

Math, per row x (the V logits of one token) with target t, over the n rows
whose target is not ignore_index:

    L = logsumexp(x) = m + log sum_j e^(x_j - m),  m = max_j x_j
    loss = (1/n) sum_rows (L - x_t)
    d loss / d x_j = (e^(x_j - L) - [j = t]) / n        (0 for ignored rows)

One program sweeps its rows' vocabulary in blocks twice: the first sweep keeps
a running max and rescaled sum (online logsumexp, so any V fits), the second
writes the gradient. The softmax is never stored, and nothing is kept in fp32
at V width: the forward reads the logits twice and writes one gradient in
their dtype, which the backward scales in place by the incoming grad_output
(so a graph through it can be backpropagated once, the usual case).

`fused_linear_cross_entropy(hidden, weight, targets)` goes further: it walks the
tokens in chunks, computing each chunk's logits = hidden_c W^T, its loss and
gradient (written over the chunk's logits in place), then dhidden_c = g W and
dW += g^T hidden_c, so at most one chunk of logits exists at a time.

Memory at vocab 50304, N = 8 x 1024 = 8192 tokens, C = 768, bf16 autocast
(MiB = 2^20 bytes; one N x V tensor is 786 MiB in bf16, 1572 MiB in fp32):
  eager `F.cross_entropy(logits.float())` as the model first wrote it: the
  forward peaks at bf16 logits + fp32 copy + fp32 log-softmax = 3930 MiB and
  keeps 2358 MiB until the backward, which adds an fp32 gradient and its bf16
  cast: ~4716 MiB at the backward's peak.
  `cross_entropy` here: bf16 logits + bf16 gradient = 1572 MiB, also the
  peak, since the backward scales the saved gradient in place: a third of eager.
  `fused_linear_cross_entropy` with 1024-token chunks: one chunk of bf16
  logits (98 MiB) + the chunk's bf16 dW product (74 MiB) + the fp32 dW
  accumulator (147 MiB) + dhidden (12 MiB) = ~331 MiB, and the N x V logits
  never exist: ~4.3 GiB less than eager's backward peak at this size (93%
  saved), and the saving grows linearly with the tokens per step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from gpt.errors import GPTError
from kernels.runtime import INTERPRETER

DEFAULT_CHUNK = 1024  # tokens per chunk in fused_linear_cross_entropy


@triton.jit
def _ce_kernel(LOGITS, TARGETS, LOSS, GRAD, N_VALID, M, V, stride_l, stride_g, ignore_index,
               BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    t = tl.load(TARGETS + rows, mask=rmask, other=ignore_index)
    valid = rmask & (t != ignore_index)
    n = tl.load(N_VALID).to(tl.float32)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    x_t = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, V, BLOCK_V):  # sweep 1: online logsumexp and the target's logit
        cols = start + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        x = tl.load(LOGITS + rows64[:, None] * stride_l + cols[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 1))
        m_new = tl.where(rmask, m_new, 0.0)  # rows past M stay finite, so no NaN is ever formed
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
        m = m_new
        x_t += tl.sum(tl.where(cols[None, :] == t[:, None], x, 0.0), 1)
    lse = m + tl.log(tl.where(rmask, s, 1.0))  # rows past M: lse = 0, finite like everything else
    tl.store(LOSS + rows, tl.where(valid, lse - x_t, 0.0) / n, mask=rmask)
    weight = tl.where(valid, 1.0 / n, 0.0)
    for start in range(0, V, BLOCK_V):  # sweep 2: the gradient, (softmax - onehot) / n
        cols = start + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        x = tl.load(LOGITS + rows64[:, None] * stride_l + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse[:, None]) - tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
        tl.store(GRAD + rows64[:, None] * stride_g + cols[None, :], (g * weight[:, None]).to(GRAD.dtype.element_ty),
                 mask=mask)


# ---------------------------------------------------------------- launcher

@dataclass(frozen=True)
class CrossEntropyTiles:
    """One launch configuration: rows a program owns, vocabulary columns per step of its sweeps, warps."""
    block_m: int
    block_v: int
    warps: int

    @property
    def shared_kib(self) -> int:
        """An upper bound on the shared memory a block needs (the row reductions' scratch: under 0.2 KiB in
        `make gpu-compile`), checked by kernels/gpu_compile.py on every compile-checked GPU."""
        return 1

    def label(self) -> str:
        return f"{self.block_m}x{self.block_v} w{self.warps}"


# On a GPU one program sweeps one row. Two tiles cover every vocabulary: small ones (a character-level
# 65) in one step of 1024 lanes, large ones (GPT-2's 50304) in steps of 8192 over 16 warps, 16 logits a
# thread. Every vocabulary maps to one of the two, so the compile check covers them all.
GPU_TILES = (CrossEntropyTiles(1, 1024, warps=4), CrossEntropyTiles(1, 8192, warps=16))


def gpu_tiles(v: int) -> CrossEntropyTiles:
    """The GPU tiles for a vocabulary of `v` (any v >= 1)."""
    return GPU_TILES[0] if v <= GPU_TILES[0].block_v else GPU_TILES[1]


def _launch_tiles(logits: torch.Tensor, block_m: int | None, block_v: int | None) -> CrossEntropyTiles:
    v = logits.size(1)
    if INTERPRETER or not logits.is_cuda:  # few, large programs: each costs ~13 ms under the interpreter
        tiles = CrossEntropyTiles(16, min(triton.next_power_of_2(v), 1024), warps=4)
    else:
        tiles = gpu_tiles(v)
    return replace(tiles, block_m=block_m or tiles.block_m, block_v=block_v or tiles.block_v)


def cross_entropy_forward(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                          n_valid: torch.Tensor | None = None, grad: torch.Tensor | None = None,
                          block_m: int | None = None, block_v: int | None = None,
                          tiles: CrossEntropyTiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on (M, V) logits: per-row losses already divided by n (fp32, (M,)) and the gradient.

    `n_valid` (a 0-d tensor) defaults to the count of non-ignored targets here; the fused linear
    op passes the whole batch's count for each chunk. `grad` may be `logits` itself (in place).
    """
    M, V = logits.shape
    if n_valid is None:
        n_valid = (targets != ignore_index).sum()
    tiles = tiles or _launch_tiles(logits, block_m, block_v)
    loss = torch.empty(M, device=logits.device, dtype=torch.float32)
    grad = torch.empty_like(logits) if grad is None else grad
    _ce_kernel[(triton.cdiv(M, tiles.block_m),)](logits, targets, loss, grad, n_valid, M, V, logits.stride(0),
                                                 grad.stride(0), ignore_index, BLOCK_M=tiles.block_m,
                                                 BLOCK_V=tiles.block_v, num_warps=tiles.warps)
    return loss, grad


def linear_cross_entropy_forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 ignore_index: int, chunk: int, tiles: CrossEntropyTiles | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, dhidden (N, C) and dweight (V, C) of mean CE(hidden W^T, targets), one token chunk at a time."""
    n_valid = (targets != ignore_index).sum()
    losses = torch.empty(hidden.size(0), device=hidden.device, dtype=torch.float32)
    dhidden = torch.empty_like(hidden)
    dweight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk):
        h = hidden[start:start + chunk]
        logits = h @ weight.t()
        loss, g = cross_entropy_forward(logits, targets[start:start + chunk], ignore_index, n_valid, grad=logits,
                                        tiles=tiles)
        losses[start:start + chunk] = loss
        torch.mm(g, weight, out=dhidden[start:start + chunk])
        dweight += g.t() @ h  # the chunk's product in the input dtype (fp32 accumulation inside the matmul)
    return losses.sum(), dhidden, dweight.to(weight.dtype)


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op("gpt_kernels::cross_entropy_fwd", mutates_args=())
def _ce_op(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    loss, grad = cross_entropy_forward(logits, targets, ignore_index)
    return loss.sum(), grad


@_ce_op.register_fake
def _(logits, targets, ignore_index):
    return logits.new_empty((), dtype=torch.float32), logits.new_empty(logits.shape)


def _once(ctx) -> None:
    # the backward scales the saved gradient in place (no second N x V buffer), so it can run only once
    if ctx.backward_done:
        raise GPTError("our fused cross-entropy scales its saved gradient in place, so its graph can be "
                       "backpropagated once only (retain_graph=True and a second backward are not supported). "
                       "Use impl='torch' for that.")
    ctx.backward_done = True


def _ce_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.backward_done = False


def _ce_backward(ctx, dloss, dgrad):
    _once(ctx)
    (grad,) = ctx.saved_tensors
    return grad.mul_(dloss.to(grad.dtype)), None, None


_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup)


@torch.library.custom_op("gpt_kernels::linear_cross_entropy_fwd", mutates_args=())
def _lce_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_cross_entropy_forward(hidden, weight, targets, ignore_index, chunk)


@_lce_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk):
    return hidden.new_empty((), dtype=torch.float32), hidden.new_empty(hidden.shape), weight.new_empty(weight.shape)


def _lce_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.backward_done = False


def _lce_backward(ctx, dloss, ddhidden, ddweight):
    _once(ctx)
    dhidden, dweight = ctx.saved_tensors
    return dhidden.mul_(dloss.to(dhidden.dtype)), dweight.mul_(dloss.to(dweight.dtype)), None, None, None


_lce_op.register_autograd(_lce_backward, setup_context=_lce_setup)


# ---------------------------------------------------------------- the ops

def input_problem(logits: torch.Tensor, targets: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs, or None when it can (impl='auto' then runs torch's op)."""
    if logits.dim() < 1 or logits.shape[:-1] != targets.shape:
        return (f"cross_entropy: logits (..., V) and targets (...) must agree; got {tuple(logits.shape)} "
                f"and {tuple(targets.shape)}.")
    if targets.dtype not in (torch.int64, torch.int32):
        return f"cross_entropy: targets must be integer class indices; got {targets.dtype}."
    return None


def linear_input_problem(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> str | None:
    """The same for fused_linear_cross_entropy."""
    if hidden.shape[:-1] != targets.shape or weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        return (f"fused_linear_cross_entropy: hidden (..., C), weight (V, C) and targets (...) must agree; "
                f"got {tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}.")
    if chunk < 1:
        return f"fused_linear_cross_entropy: chunk={chunk} must be at least 1."
    return None


def cross_entropy_triton(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Mean cross-entropy over targets != ignore_index (fp32 scalar) through our kernel."""
    problem = input_problem(logits, targets)
    if problem:
        raise GPTError(problem)
    x = logits.reshape(-1, logits.size(-1))
    x = x if x.stride(-1) == 1 else x.contiguous()
    loss, _ = _ce_op(x, targets.reshape(-1), int(ignore_index))
    return loss


def linear_cross_entropy_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                ignore_index: int = -1, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean cross-entropy of (hidden @ weight.T) without materialising the logits (see the module docstring)."""
    problem = linear_input_problem(hidden, weight, targets, chunk)
    if problem:
        raise GPTError(problem)
    if torch.is_autocast_enabled(hidden.device.type):  # the matmuls run in the autocast dtype, as lm_head would
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    h = hidden.reshape(-1, hidden.size(-1)).contiguous()
    loss, _, _ = _lce_op(h, weight.contiguous(), targets.reshape(-1), int(ignore_index), int(chunk))
    return loss
