"""Causal FlashAttention-2 in Triton: forward, backward and in-kernel dropout.

Math (per batch and head; q, k, v are (T, D); s = scale, default 1/sqrt(D)):

    S = s * Q K^T,  S_ij = -inf where j > i (causal)
    P = softmax(S) row-wise,  O = (P * Z) V,  Z_ij = keep_ij / (1 - p)   (dropout)

Forward: each program owns BLOCK_M query rows and sweeps the key/value blocks
with an online softmax, so the T x T matrix never exists. For a running row
max m and sum l over the blocks seen so far, a new block S_b updates

    m' = max(m, rowmax S_b),  l' = l e^(m - m') + rowsum e^(S_b - m'),
    acc' = acc e^(m - m') + (e^(S_b - m') * Z_b) V_b,

and at the end O = acc / l and L = m + log l (the logsumexp, saved for the
backward: P_ij = e^(S_ij - L_i)). Exponentials are taken in base 2 with the
scale folded in (s * log2 e), which is one multiply cheaper per element.

Backward, with dO given and Delta_i = sum_d dO_id O_id (one pass over O):

    dV = (P * Z)^T dO,  dP = (dO V^T) * Z,  dS = P * (dP - Delta),
    dQ = s dS K,  dK = s dS^T Q.

Delta_i = rowsum(P * dP) holds with dropout too, because O already contains Z.
P is recomputed block by block from Q, K and L; one program per key block
accumulates dK and dV over the query blocks at or below the diagonal, then
the same program accumulates dQ for the query block with that index, so no
atomics are needed and the result is deterministic.

Dropout: keep_ij = rand(key=(seed, batch*H + head), counter=i*T + j) >= p,
Philox via `tl.rand`, so the backward regenerates exactly the forward's mask
from the seed whatever the tiling. Any T works (tails are masked), head dims
up to 128 including non-powers of two (the kernel pads D to a power of two
through masked loads), fp32 / fp16 / bf16 inputs with fp32 accumulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpt.errors import GPTError
from kernels.runtime import INTERPRETER, LOG2E, max_shared_memory

_LOG2E = tl.constexpr(LOG2E)  # a jitted kernel reads module globals only as constexprs

MAX_HEAD_DIM = 128
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _keep(seed, bh, offs, dropout_p):
    # Philox key = (seed, head index): each head gets its own stream; the counter is the element's index
    # in that head's T x T matrix, so any tiling of the matrix draws the same numbers.
    key = seed + bh.to(tl.int64) * 4294967296
    return tl.rand(key, offs) >= dropout_p


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, skt, svt, rows, dims, dmask, bh, lo, hi, T,
               qk_scale, dropout_p, seed,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
               PRECISION: tl.constexpr):
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < T
        kt = tl.load(k_base + cols[None, :] * skt + dims[:, None], mask=dmask[:, None] & cmask[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:  # only the diagonal and tail blocks pay for the mask
            valid = cmask[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax denominator counts dropped entries too
        if DROPOUT:
            keep = _keep(seed, bh, rows[:, None] * T + cols[None, :], dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        v = tl.load(v_base + cols[:, None] * svt + dims[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                H, T, qk_scale, dropout_p, seed,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HEAD_DIM
    rmask = rows < T
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + dims[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:  # keys before this block are visible to every row; keys in it need the causal mask
        full_end = m0
        masked_end = tl.minimum(m0 + BLOCK_M, T)
    else:  # every key is visible; only the ragged last block needs a mask
        full_end = (T // BLOCK_N) * BLOCK_N
        masked_end = T
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, skt, svt, rows, dims, dmask, bh, 0, full_end, T,
                               qk_scale, dropout_p, seed, BLOCK_N, CAUSAL, False, DROPOUT, PRECISION)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, skt, svt, rows, dims, dmask, bh, full_end,
                               masked_end, T, qk_scale, dropout_p, seed, BLOCK_N, CAUSAL, True, DROPOUT, PRECISION)
    o = acc / l_i[:, None]
    bh64 = bh.to(tl.int64)
    out = O + bh64 * T * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(out, o.to(O.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    tl.store(LSE + bh64 * T + rows, (m_i + tl.log2(l_i)) / _LOG2E, mask=rmask)


@triton.jit
def _delta_kernel(O, DO, DELTA, T, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    # Delta_i = sum_d dO_id O_id: o and do are contiguous (B*H, T, D)
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows < T)[:, None] & (dims < HEAD_DIM)[None, :]
    offs = bh * T * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + rows, tl.sum(o * do, 1), mask=rows < T)


@triton.jit
def _bwd_dkdv_tiles(dk, dv, k, v, cols, q_base, do_base, sqt, lse_base, delta_base, dims, dmask, bh, lo, hi, T,
                    qk_scale, dropout_p, seed,
                    BLOCK_Q: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
                    PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr):
    # works in the transposed layout (keys x queries) so that dK and dV come out of plain dots
    for start in range(lo, hi, BLOCK_Q):
        rows = start + tl.arange(0, BLOCK_Q)
        rmask = rows < T
        qt = tl.load(q_base + rows[None, :] * sqt + dims[:, None], mask=dmask[:, None] & rmask[None, :], other=0.0)
        do = tl.load(do_base + rows[:, None] * HEAD_DIM + dims[None, :], mask=rmask[:, None] & dmask[None, :],
                     other=0.0)
        lse = tl.load(lse_base + rows, mask=rmask, other=0.0) * _LOG2E
        delta = tl.load(delta_base + rows, mask=rmask, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # (BLOCK_K, BLOCK_Q)
        if MASKED:
            valid = rmask[None, :] & (cols < T)[:, None]
            if CAUSAL:
                valid = valid & (cols[:, None] <= rows[None, :])
            st = tl.where(valid, st, float("-inf"))
        pt = tl.exp2(st - lse[None, :])
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, rows[None, :] * T + cols[:, None], dropout_p)
            pdt = tl.where(keep, pt / (1.0 - dropout_p), 0.0)
            dpt = tl.where(keep, dpt / (1.0 - dropout_p), 0.0)
        else:
            pdt = pt
        dv += tl.dot(pdt.to(do.dtype), do, input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dq_tiles(dq, q, do, lse, delta, rows, k_base, v_base, skt, svt, dims, dmask, bh, lo, hi, T,
                  qk_scale, dropout_p, seed,
                  BLOCK_K: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
                  PRECISION: tl.constexpr):
    for start in range(lo, hi, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        cmask = cols < T
        kt = tl.load(k_base + cols[None, :] * skt + dims[:, None], mask=dmask[:, None] & cmask[None, :], other=0.0)
        vt = tl.load(v_base + cols[None, :] * svt + dims[:, None], mask=dmask[:, None] & cmask[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if MASKED:
            valid = cmask[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, rows[:, None] * T + cols[None, :], dropout_p)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_kernel(Q, K, V, DO, LSE, DELTA, DQ, DK, DV, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                H, T, sm_scale, qk_scale, dropout_p, seed,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_BIG: tl.constexpr, BLOCK_SMALL: tl.constexpr,
                CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    do_base = DO + bh64 * T * HEAD_DIM  # do, dq, dk, dv are contiguous (B*H, T, D)
    lse_base = LSE + bh64 * T
    delta_base = DELTA + bh64 * T
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HEAD_DIM
    start = pid * BLOCK_BIG
    t_full = (T // BLOCK_SMALL) * BLOCK_SMALL  # queries/keys before this index come in whole small tiles

    # phase 1: dK, dV for keys [start, start + BLOCK_BIG), summed over the queries that see them
    cols = start + tl.arange(0, BLOCK_BIG)
    cmask = cols < T
    kv_mask = cmask[:, None] & dmask[None, :]
    k = tl.load(k_base + cols[:, None] * skt + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + cols[:, None] * svt + dims[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_BIG, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_BIG, BLOCK_D], tl.float32)
    if CAUSAL:  # queries in the diagonal block need the mask, later whole tiles do not, a ragged tail does
        diag_lo = start
        diag_hi = tl.minimum(start + BLOCK_BIG, T)
        mid_lo = start + BLOCK_BIG
    else:
        diag_lo = 0
        diag_hi = 0
        mid_lo = 0
    mid_hi = tl.maximum(mid_lo, t_full)
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, cols, q_base, do_base, sqt, lse_base, delta_base, dims, dmask, bh,
                             diag_lo, diag_hi, T, qk_scale, dropout_p, seed,
                             BLOCK_SMALL, CAUSAL, True, DROPOUT, PRECISION, HEAD_DIM)
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, cols, q_base, do_base, sqt, lse_base, delta_base, dims, dmask, bh,
                             mid_lo, mid_hi, T, qk_scale, dropout_p, seed,
                             BLOCK_SMALL, CAUSAL, False, DROPOUT, PRECISION, HEAD_DIM)
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, cols, q_base, do_base, sqt, lse_base, delta_base, dims, dmask, bh,
                             mid_hi, T, T, qk_scale, dropout_p, seed,
                             BLOCK_SMALL, CAUSAL, True, DROPOUT, PRECISION, HEAD_DIM)
    out = bh64 * T * HEAD_DIM + cols[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)

    # phase 2: dQ for queries [start, start + BLOCK_BIG), summed over the keys they see
    rows = start + tl.arange(0, BLOCK_BIG)
    rmask = rows < T
    q_mask = rmask[:, None] & dmask[None, :]
    q = tl.load(q_base + rows[:, None] * sqt + dims[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * HEAD_DIM + dims[None, :], mask=q_mask, other=0.0)
    lse = tl.load(lse_base + rows, mask=rmask, other=0.0) * _LOG2E
    delta = tl.load(delta_base + rows, mask=rmask, other=0.0)
    dq = tl.zeros([BLOCK_BIG, BLOCK_D], tl.float32)
    if CAUSAL:
        full_end = start
        masked_end = tl.minimum(start + BLOCK_BIG, T)
    else:
        full_end = t_full
        masked_end = T
    dq = _bwd_dq_tiles(dq, q, do, lse, delta, rows, k_base, v_base, skt, svt, dims, dmask, bh, 0, full_end, T,
                       qk_scale, dropout_p, seed, BLOCK_SMALL, CAUSAL, False, DROPOUT, PRECISION)
    dq = _bwd_dq_tiles(dq, q, do, lse, delta, rows, k_base, v_base, skt, svt, dims, dmask, bh, full_end, masked_end,
                       T, qk_scale, dropout_p, seed, BLOCK_SMALL, CAUSAL, True, DROPOUT, PRECISION)
    out = bh64 * T * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _mask_kernel(KEEP, T, dropout_p, seed, BLOCK: tl.constexpr):
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    for start in range(0, T, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        keep = _keep(seed, bh, rows[:, None] * T + cols[None, :], dropout_p)
        offs = bh.to(tl.int64) * T * T + rows[:, None] * T + cols[None, :]
        tl.store(KEEP + offs, keep.to(tl.int8), mask=(rows < T)[:, None] & (cols < T)[None, :])


# ---------------------------------------------------------------- launchers

@dataclass(frozen=True)
class AttentionTiles:
    """One launch configuration: the forward's and the backward's tiles, warps and pipeline stages.

    `shared_kib` is the most shared memory per block this configuration needed on any compile-checked
    GPU (kernels/gpu_compile.py fails when a compile needs more), so a device with at least that much
    can run it: the launchers pick tiles by it without compiling anything.
    """
    block_m: int       # forward: query rows a program owns
    block_n: int       # forward: keys per step of its sweep
    block_big: int     # backward: keys (then queries) a program owns
    block_small: int   # backward: queries (then keys) per step
    warps: int         # forward
    stages: int        # forward
    bwd_warps: int = 0   # 0: as the forward
    bwd_stages: int = 0  # 0: as the forward
    shared_kib: int = 0

    @property
    def backward_warps(self) -> int:
        return self.bwd_warps or self.warps

    @property
    def backward_stages(self) -> int:
        return self.bwd_stages or self.stages

    def label(self) -> str:
        return (f"fwd {self.block_m}x{self.block_n} w{self.warps} s{self.stages}, "
                f"bwd {self.block_big}x{self.block_small} w{self.backward_warps} s{self.backward_stages}")


# Few large programs under the interpreter: each costs ~13 ms whatever it does.
INTERPRETER_TILES = AttentionTiles(block_m=64, block_n=32, block_big=64, block_small=32, warps=4, stages=1)

# GPU tiles by (BLOCK_D, bytes per element), largest first: a launch takes the first whose shared_kib
# fits the device's shared memory per block. Chosen with `python -m kernels.gpu_compile`, whose table
# (docs/benchmarks.md) gives each one's shared memory, registers and spills on sm_80, sm_89 and sm_90.
# 8 warps everywhere: with 4, the 128x64 forward spilled 240 bytes a thread on sm_80 with dropout (255
# registers) and the 128x32 backward 300-1600 bytes; with 8, the forward does not spill and the backward
# at most 16 bytes (sm_80, dropout).
# No fp32 tiles: fp32 dots are exact (ieee, as torch's matmuls), i.e. FMA loops without tensor cores.
# 128x64 tiles spilled 40-100 KB a thread and needed 112-160 KiB (over sm_89's 99); 64x32 fit (72-84 KiB,
# no spills, sm_80, head dim 128) but took 40-110 s to compile per variant, which would put 56 such
# compiles per GPU in the check, and the kernel would run far below torch's SDPA. fp32 attention on a GPU
# is SDPA's (auto) or an error that says so (impl='triton').
_HALF_UP_TO_64 = AttentionTiles(128, 64, 128, 32, warps=8, stages=3, shared_kib=64)
_HALF_128 = AttentionTiles(128, 64, 64, 32, warps=8, stages=2, shared_kib=96)
GPU_TILES: dict[tuple[int, int], tuple[AttentionTiles, ...]] = {
    (16, 2): (_HALF_UP_TO_64,), (32, 2): (_HALF_UP_TO_64,), (64, 2): (_HALF_UP_TO_64,), (128, 2): (_HALF_128,),
}
GPU_DTYPES = (torch.float16, torch.bfloat16)


def block_d(head_dim: int) -> int:
    """The head dim padded to a power of two, at least 16 (tl.dot's minimum K)."""
    return max(16, triton.next_power_of_2(head_dim))


def gpu_tiles(head_dim: int, dtype: torch.dtype, max_shared: int) -> AttentionTiles | None:
    """The largest GPU tiles for this head dim and dtype that fit `max_shared` bytes a block, or None."""
    candidates = GPU_TILES.get((block_d(head_dim), dtype.itemsize), ())
    return next((t for t in candidates if t.shared_kib * 1024 <= max_shared), None)


def _launch_tiles(q: torch.Tensor, blocks: AttentionTiles | dict[str, int] | None) -> AttentionTiles:
    if isinstance(blocks, AttentionTiles):
        return blocks
    if blocks is not None:  # tests pass the six launch numbers as a dict
        return AttentionTiles(**blocks)
    if INTERPRETER or not q.is_cuda:
        return INTERPRETER_TILES
    head_dim = q.size(-1)
    tiles = gpu_tiles(head_dim, q.dtype, max_shared_memory(q.device))
    if tiles is None:
        raise GPTError(input_problem(q, q, q, 0.0) or
                       f"flash_attention: no tiles for head dim {head_dim} in {q.dtype} fit this GPU's "
                       f"{max_shared_memory(q.device) // 1024} KiB of shared memory per block. "
                       "Use impl='auto' or 'torch' (config: attention=torch).")
    return tiles


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs (the interpreter: the GPU tables have no fp32 tiles) get true fp32 dots, not tf32, matching
    # torch's default matmul precision
    return "ieee" if dtype == torch.float32 else "tf32"


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: int, causal: bool,
                      dropout_p: float, scale: float, blocks: AttentionTiles | dict[str, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: returns O (B, H, T, D) contiguous and the logsumexp L (B, H, T) in fp32."""
    B, H, T, D = q.shape
    q, k, v = (_lastdim_contiguous(t) for t in (q, k, v))
    cfg = _launch_tiles(q, blocks)
    o = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(T, cfg.block_m), B * H)
    _fwd_kernel[grid](q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), H, T, scale * LOG2E, dropout_p, seed,
                      HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal,
                      DROPOUT=dropout_p > 0.0, PRECISION=_precision(q.dtype), num_warps=cfg.warps,
                      num_stages=cfg.stages)
    return o, lse


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, seed: int, causal: bool, dropout_p: float, scale: float,
                       blocks: AttentionTiles | dict[str, int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: Delta = rowsum(dO * O), then dQ, dK, dV (contiguous, in q's dtype)."""
    B, H, T, D = q.shape
    q, k, v = (_lastdim_contiguous(t) for t in (q, k, v))
    do = do.contiguous()
    cfg = _launch_tiles(q, blocks)
    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(T, cfg.block_m), B * H)](o, do, delta, T, HEAD_DIM=D, BLOCK_D=block_d(D),
                                                         BLOCK_M=cfg.block_m)
    dq, dk, dv = (torch.empty((B, H, T, D), device=q.device, dtype=q.dtype) for _ in range(3))
    grid = (triton.cdiv(T, cfg.block_big), B * H)
    _bwd_kernel[grid](q, k, v, do, lse, delta, dq, dk, dv, q.stride(0), q.stride(1), q.stride(2),
                      k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                      H, T, scale, scale * LOG2E, dropout_p, seed,
                      HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_BIG=cfg.block_big, BLOCK_SMALL=cfg.block_small,
                      CAUSAL=causal, DROPOUT=dropout_p > 0.0, PRECISION=_precision(q.dtype),
                      num_warps=cfg.backward_warps, num_stages=cfg.backward_stages)
    return dq, dk, dv


def dropout_keep_mask(seed: int, batch_heads: int, T: int, dropout_p: float, device: torch.device | str
                      ) -> torch.Tensor:
    """The (batch*heads, T, T) boolean keep-mask the kernels draw for `seed`: for tests and debugging."""
    keep = torch.empty((batch_heads, T, T), device=device, dtype=torch.int8)
    block = 32
    _mask_kernel[(triton.cdiv(T, block), batch_heads)](keep, T, dropout_p, seed, BLOCK=block)
    return keep.bool()


# ---------------------------------------------------------------- custom ops: opaque to torch.compile, with autograd

@torch.library.custom_op("gpt_kernels::flash_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: torch.Tensor, causal: bool,
            dropout_p: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, int(seed.item()), causal, dropout_p, scale)


@_fwd_op.register_fake
def _(q, k, v, seed, causal, dropout_p, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("gpt_kernels::flash_attention_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, seed: torch.Tensor, causal: bool, dropout_p: float,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(do, q, k, v, o, lse, int(seed.item()), causal, dropout_p, scale)


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, seed, causal, dropout_p, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, seed, causal, dropout_p, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, seed)
    ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, seed = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do, q, k, v, o, lse, seed, ctx.causal, ctx.dropout_p, ctx.scale)
    return dq, dk, dv, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- the op

def input_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> str | None:
    """Why the kernel cannot take these inputs, or None when it can (impl='auto' falls back on a problem)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return (f"flash_attention takes q, k, v of one shape (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}. For a KV-cache step (fewer queries than keys) use impl='torch'.")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return (f"flash_attention takes q, k, v in one of float32, float16, bfloat16; got {q.dtype}, {k.dtype}, "
                f"{v.dtype}. Cast them to one dtype first.")
    if q.is_cuda and q.dtype not in GPU_DTYPES:
        return (f"flash_attention's GPU kernel takes float16 and bfloat16; got {q.dtype} (exact fp32 dots have no "
                "tensor cores and compile for minutes). Use impl='auto' or 'torch' (config: attention=torch), or "
                "train under autocast (dtype=bfloat16).")
    if not 1 <= q.size(-1) <= MAX_HEAD_DIM:
        return (f"flash_attention's kernel takes head dims up to {MAX_HEAD_DIM}; got {q.size(-1)}. "
                "Use impl='torch' (attention=torch) for wider heads.")
    if not 0.0 <= dropout_p < 1.0:
        return f"dropout_p={dropout_p} must be in [0, 1)."
    return None


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                           dropout_p: float = 0.0, scale: float | None = None, seed: int | None = None
                           ) -> torch.Tensor:
    """Attention through our kernels. `seed` fixes the dropout mask; None draws one from torch's CPU generator."""
    problem = input_problem(q, k, v, dropout_p)
    if problem:
        raise GPTError(problem)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    if seed is None:  # from torch's generator, so torch.manual_seed makes dropout reproducible
        seed_t = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64) if dropout_p > 0.0 \
            else torch.zeros(1, dtype=torch.int64)
    else:
        seed_t = torch.tensor([seed], dtype=torch.int64)
    o, _ = _fwd_op(q, k, v, seed_t, causal, float(dropout_p), scale)
    return o
