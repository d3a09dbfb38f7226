"""Plain-torch versions of the model's ops, two per op.

`*_torch`: torch's own fused op (scaled_dot_product_attention, F.layer_norm, F.rms_norm,
F.cross_entropy; for RoPE, which torch lacks, the usual rotate-half in tensor ops), what
impl='torch' runs and what impl='auto' falls back to. `*_math`: the formula written out in
elementary tensor ops, impl='math', the slow oracle the kernels are tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None,
                   q_offset: int = 0, keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, written out. q: (B, H, Tq, D); k, v: (B, H, Tk, D).

    With `causal`, query i (at absolute position q_offset + i) sees keys 0 .. q_offset + i,
    so a KV-cache step (Tq < Tk) is masked correctly. `keep`, a boolean (B, H, Tq, Tk)
    mask, replaces the random dropout mask (to check a kernel's dropout against this).
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale
    if causal:
        tq, tk = q.size(-2), k.size(-2)
        rows = torch.arange(tq, device=q.device).unsqueeze(1) + q_offset
        cols = torch.arange(tk, device=q.device).unsqueeze(0)
        att = att.masked_fill(cols > rows, float("-inf"))
    att = F.softmax(att, dim=-1)
    if keep is not None:
        att = att * keep / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None,
                   q_offset: int = 0) -> torch.Tensor:
    """torch's scaled_dot_product_attention, with the same masking contract as attention_math."""
    tq, tk = q.size(-2), k.size(-2)
    if not causal or (q_offset == 0 and tq == tk):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    if tq == 1 and q_offset == tk - 1:  # one new token sees every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    rows = torch.arange(tq, device=q.device).unsqueeze(1) + q_offset
    mask = torch.arange(tk, device=q.device).unsqueeze(0) <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def layer_norm_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim: torch's F.layer_norm."""
    return F.layer_norm(x, (x.size(-1),), weight, bias, eps)


def layer_norm_math(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm written out, statistics in fp32 or wider (biased variance, as F.layer_norm)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps) * weight.to(xf.dtype)
    if bias is not None:
        y = y + bias.to(xf.dtype)
    return y.to(x.dtype)


def cross_entropy_torch(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Mean cross-entropy over targets != ignore_index, computed in fp32 (as the model always has)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=ignore_index)


def cross_entropy_math(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """logsumexp(logits) - logits[target], averaged over targets != ignore_index, in fp32."""
    x = logits.reshape(-1, logits.size(-1)).float()
    t = targets.reshape(-1)
    keep = t != ignore_index
    picked = x.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
    losses = (torch.logsumexp(x, dim=-1) - picked) * keep
    return losses.sum() / keep.sum()


def linear_cross_entropy_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -1) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets), materialising the logits."""
    return cross_entropy_torch(F.linear(hidden, weight), targets, ignore_index)


def linear_cross_entropy_math(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              ignore_index: int = -1) -> torch.Tensor:
    return cross_entropy_math(hidden @ weight.t(), targets, ignore_index)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim: torch's F.rms_norm."""
    return F.rms_norm(x, (x.size(-1),), weight, eps)


def rms_norm_math(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm written out, the statistic in fp32 or wider."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(xf.dtype)
    return y.to(x.dtype)


def rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (B, T, H, D) by (T, D/2) tables: x * [cos, cos] + [x2, x1] * [-sin, sin].

    Written as one swap and two products over x (the tables are widened instead, T x D numbers):
    4 passes over x forward instead of the 7 of rotating the two halves apart, which on CPU, where
    this is what runs, measured 0.96 against 1.18 ms per forward + backward at the CPU model's
    q of (12, 64, 4, 32) (one thread).
    """
    half = x.size(-1) // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    c = torch.cat((cos, cos), dim=-1).unsqueeze(1).to(x.dtype)  # (T, 1, D): the same angle for every head
    s = torch.cat((-sin, sin), dim=-1).unsqueeze(1).to(x.dtype)
    return x * c + swapped * s


def rope_math(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as complex multiplication: (x1 + i x2) * (cos + i sin), in float64."""
    x1, x2 = x.double().chunk(2, dim=-1)
    z = torch.complex(x1, x2) * torch.complex(cos.double(), sin.double()).unsqueeze(1)
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)
