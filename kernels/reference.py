"""Plain-torch versions of the model's ops: the fallback everywhere and the test oracle."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None,
                   q_offset: int = 0) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, written out. q: (B, H, Tq, D); k, v: (B, H, Tk, D).

    With `causal`, query i (at absolute position q_offset + i) sees keys 0 .. q_offset + i,
    so a KV-cache step (Tq < Tk) is masked correctly.
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale
    if causal:
        tq, tk = q.size(-2), k.size(-2)
        rows = torch.arange(tq, device=q.device).unsqueeze(1) + q_offset
        cols = torch.arange(tk, device=q.device).unsqueeze(0)
        att = att.masked_fill(cols > rows, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None,
                   q_offset: int = 0) -> torch.Tensor:
    """torch's fused scaled_dot_product_attention, with the same masking contract as attention_math."""
    tq, tk = q.size(-2), k.size(-2)
    if not causal or (q_offset == 0 and tq == tk):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    if tq == 1 and q_offset == tk - 1:  # one new token sees every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    rows = torch.arange(tq, device=q.device).unsqueeze(1) + q_offset
    mask = torch.arange(tk, device=q.device).unsqueeze(0) <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
