"""The GPT: nanoGPT's design, readable in one file.

Token + learned position embeddings, n_layer pre-LayerNorm blocks (causal
self-attention, GELU MLP), a final LayerNorm and an output head tied to the
token embedding. GPT-2 initialisation, with residual projections scaled by
1/sqrt(2 * n_layer). The model knows nothing of ranks, launchers or devices;
attention, the norms, RoPE and the loss come from `kernels` by name, Triton or
torch, as the run's KernelConfig says (a runtime choice, not part of the weights:
`model.kernels` may be changed at any time, e.g. to sample on another device).

The architecture options of ModelConfig change that default, one at a time (the
recipe of modded-nanogpt, docs/benchmarks.md "Time to loss" measures each):
rotary positions instead of the learned table (`pos_emb=rope`), RMSNorm
(`norm=rmsnorm`), RMS-normalised queries and keys (`qk_norm`), a ReLU² or SwiGLU
MLP (`mlp`), an output head of its own (`tie_embeddings=False`), output
projections that start at zero (`zero_init`), and tanh-capped logits
(`logit_softcap`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt.config import KernelConfig, ModelConfig, validate_model
from kernels import attention, cross_entropy, fused_linear_cross_entropy, layer_norm, rms_norm, rope

Rope = Optional[tuple[torch.Tensor, torch.Tensor]]  # (cos, sin), (T, head_dim/2) each: see rope_tables


class KVCache:
    """Keys and values of every layer for the tokens seen so far, for incremental decoding.

    Buffers of a fixed size, allocated once: (n_layer, B, nh, max_len, hs). The key and value of
    position p live in slot p % max_len, and `pos`, the position of the next token, is a tensor:
    a decode step then has the same shapes and the same Python state at every position, so one
    compiled graph (one CUDA graph) serves them all. Attention covers every slot, masked to the
    slots written so far; stale slots after a `reset` are masked too, so nothing is cleared.

    A chunk of several tokens (a prompt) must fit in the slots left. Single tokens may go on past
    max_len: each then overwrites the oldest key, and every layer attends to the last max_len
    positions (sliding-window attention). That suits rotary positions, whose scores depend only
    on distances; with learned positions a token can have no position past block_size, so
    gpt/generate.py re-anchors the window instead (`reset` and a new prefill).
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.max_len = max_len
        self.slot_ids = torch.arange(max_len, device=device)

    def positions(self, t: int) -> torch.Tensor:
        """The absolute positions (t,) of the next t tokens, after those seen.

        A forward calls this once, then `attend` in every layer, then `advance`: the slots and
        the mask of these t tokens are worked out here once, not in each layer (measured on the
        2-core CPU: building the mask took ~35 us, a decode step's attention ~45 us with it).
        """
        positions = self.pos if t == 1 else self.pos + torch.arange(t, device=self.pos.device)
        if t > 1 and int(positions[-1]) >= self.max_len:  # one host sync, for prompts only; decode steps stay async
            raise ValueError(f"a chunk of {t} tokens reaches position {int(positions[-1])}: the cache holds "
                             f"{self.max_len}; past it, feed one token at a time (or reset)")
        self.slots = positions % self.max_len
        # slot s is visible to the query at position p once written: before the first wrap slot s
        # holds position s (s <= p); after it, every slot holds one of the last max_len positions.
        # Additive, in the cache's dtype: SDPA converted a boolean mask in every layer (~20 us each)
        hidden = self.slot_ids[None, :] > positions[:, None]
        self.mask = torch.zeros(hidden.shape, dtype=self.k.dtype, device=hidden.device).masked_fill_(hidden, float("-inf"))
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the new tokens' k, v (B, nh, T, hs) for `layer`; attention of q (B, nh, T, hs) over every key kept.

        Torch's SDPA with a mask tensor, not kernels.attention: that op takes its causal mask as an
        int offset, which a compiled decode step would bake in (one graph per position); for a cache
        step it runs torch's SDPA anyway. Inference only: no dropout.
        """
        self.k[layer].index_copy_(2, self.slots, k)
        self.v[layer].index_copy_(2, self.slots, v)
        return F.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=self.mask)

    def advance(self, t: int) -> None:
        """Count t more tokens seen (in place, so a compiled step's inputs keep their address)."""
        self.pos += t

    def reset(self) -> None:
        """Forget every token: the next one is at position 0."""
        self.pos.zero_()


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters (same names, bias optional) computed by kernels.layer_norm."""

    def __init__(self, ndim: int, bias: bool, kernels: KernelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, 1e-5, impl=self.kernels.layernorm)


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim (no mean, no bias), computed by kernels.rms_norm."""

    def __init__(self, ndim: int, kernels: KernelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, 1e-6, impl=self.kernels.rmsnorm)


def make_norm(config: ModelConfig, ndim: int, kernels: KernelConfig) -> nn.Module:
    return LayerNorm(ndim, config.bias, kernels) if config.norm == "layernorm" else RMSNorm(ndim, kernels)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables of rotary embeddings at the given absolute positions.

    Contract (a KV cache relies on it): `positions` holds the absolute position of each
    of a forward's T tokens, any non-negative integers, not only 0 .. block_size-1; the
    result is (cos, sin), each (T, head_dim/2) fp32 on the positions' device, pair i of
    position p turned by p * base^(-2i/head_dim). Attention rotates q and k with them
    (kernels.rope) before the keys enter a cache, so a cached key keeps the rotation of
    the position it was computed at and never needs rotating again. Computed for every
    forward (T x head_dim/2 numbers, microseconds), so nothing is cached that a dtype cast
    or a device move could spoil.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dropout: float, kernels: KernelConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = config.n_head
        # QK-norm: one RMSNorm over every query and key head, one gain per channel shared by both (only their
        # product enters a score), so attention logits stay bounded however large a high learning rate makes
        # the weights; queries and keys are normalised and rotated in one call each, not two
        self.qk_norm = RMSNorm(config.n_embd // config.n_head, kernels) if config.qk_norm else None
        self.dropout = dropout
        self.layer = layer
        self.kernels = kernels

    def forward(self, x: torch.Tensor, tables: Rope = None, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, T, C = x.size()
        qk, v = self.c_attn(x).split([2 * C, C], dim=2)
        qk = qk.view(B, T, 2 * self.n_head, C // self.n_head)  # (B, T, 2 nh, hs): the queries' heads, the keys'
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        if tables is not None:  # rotated before the keys enter the cache
            qk = rope(qk, *tables, impl=self.kernels.rope)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs) each
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is None:
            y = attention(q, k, v, causal=True, dropout_p=self.dropout if self.training else 0.0,
                          impl=self.kernels.attention)
        else:
            y = cache.attend(self.layer, q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """c_fc, the activation, c_proj. For SwiGLU c_fc holds the gate and the up projection stacked: silu(g) * u."""

    def __init__(self, config: ModelConfig, dropout: float):
        super().__init__()
        hidden = config.mlp_hidden
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, (2 if self.kind == "swiglu" else 1) * hidden, bias=config.bias)
        self.gelu = nn.GELU() if self.kind == "gelu" else None
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = self.gelu(h)
        elif self.kind == "relu2":  # ReLU squared (So et al., "Primer", 2021)
            h = torch.relu(h).square()
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dropout: float, kernels: KernelConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd, kernels)
        self.attn = CausalSelfAttention(config, layer, dropout, kernels)
        self.ln_2 = make_norm(config, config.n_embd, kernels)
        self.mlp = MLP(config, dropout)

    def forward(self, x: torch.Tensor, tables: Rope = None, cache: Optional[KVCache] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), tables, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, dropout: float = 0.0, kernels: Optional[KernelConfig] = None,
                 activation_checkpointing: bool = False):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (it comes from the dataset's tokenizer)")
        validate_model(config)
        self.config = config
        # one object shared by every module: assigning model.kernels' fields switches them all
        self.kernels = dataclasses.replace(kernels) if kernels is not None else KernelConfig()
        # training keeps only each block's input and recomputes the block in the backward (a runtime choice)
        self.activation_checkpointing = activation_checkpointing
        learned = config.pos_emb == "learned"
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if learned else {}),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(config, i, dropout, self.kernels) for i in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd, self.kernels),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # the output head reads tokens with the same vectors that embed them
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: keep the residual stream's variance flat in depth
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init:  # every block starts as the identity, and an untied head predicts uniformly
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight") or (name == "lm_head.weight" and not config.tie_embeddings):
                    torch.nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def use_kernels(self, kernels: KernelConfig) -> None:
        """Switch every op to `kernels`' implementations (the weights are untouched)."""
        for f in dataclasses.fields(KernelConfig):
            setattr(self.kernels, f.name, getattr(kernels, f.name))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (as nanoGPT reports it).

        The token embedding is counted: tied, it is the output head, which does compute.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden_matrices(self) -> dict[str, int]:
        """The 2-D weights inside the blocks (what Muon orthogonalises), each with how many matrices it
        stacks: c_attn holds q, k and v (3), a SwiGLU c_fc the gate and the up projection (2), others 1.
        Embeddings, the head, norms and biases are not hidden matrices."""
        stacked = {"attn.c_attn.weight": 3, "mlp.c_fc.weight": 2 if self.config.mlp == "swiglu" else 1}
        out = {}
        for name, p in self.named_parameters():
            if name.startswith("transformer.h.") and p.dim() == 2:
                out[name] = next((n for suffix, n in stacked.items() if name.endswith(suffix)), 1)
        return out

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for `batch` sequences, block_size slots long (the window the model was trained on).

        `dtype` is the one keys and values are computed in: the weights', or autocast's under autocast.
        """
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head, device, dtype)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, last_only: bool = False
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Logits (B, T, vocab) — or (B, 1, vocab) with `last_only` — and the mean loss if targets are given.

        Targets equal to -1 are ignored. With a cache, idx holds only the new tokens,
        which take the positions after those already seen (`cache.positions`). With `fused_linear_loss`
        and targets, the logits are never built and None is returned in their place (unless the
        logits are soft-capped: the cap needs them).

        Past block_size a cache rolls (single tokens only): a learned-position model has no position
        there and refuses it; a rotary one rotates by the absolute position, and since its attention
        scores depend only on distances, the rolled window equals recomputing it from position 0.
        """
        b, t = idx.size()
        c = self.config
        if cache is None:
            if t > c.block_size:
                raise ValueError(f"cannot forward {t} positions: block_size is {c.block_size}")
            pos = torch.arange(t, dtype=torch.long, device=idx.device)
        else:
            pos = cache.positions(t)
        x = self.transformer.wte(idx)
        if c.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        tables = rope_tables(pos, c.n_embd // c.n_head, c.rope_base) if c.pos_emb == "rope" else None
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training and cache is None:
                # non-reentrant: works under compile, DDP and ZeRO; dropout's RNG state is replayed exactly
                x = checkpoint(block, x, tables, use_reentrant=False)
            else:
                x = block(x, tables, cache)
        if cache is not None:
            cache.advance(t)
        x = self.transformer.ln_f(x)
        if targets is not None:
            impl = self.kernels.cross_entropy
            # the cap bends the logits, so a capped model builds them (config validation refuses the pair)
            if self.kernels.fused_linear_loss and not self.config.logit_softcap:
                return None, fused_linear_cross_entropy(x, self.lm_head.weight, targets, ignore_index=-1, impl=impl)
            logits = self._logits(x)
            return logits, cross_entropy(logits, targets, ignore_index=-1, impl=impl)
        return self._logits(x[:, [-1], :] if last_only else x), None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        if cap:  # smooth clipping to (-cap, cap): no logit can run away, so a larger learning rate stays stable
            logits = cap * torch.tanh(logits / cap)
        return logits
