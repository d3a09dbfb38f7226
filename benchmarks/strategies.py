"""Memory per rank of each strategy, by formula: `python launch/bench.py strategies [--key=value ...]`.

For a model of P parameters trained over W ranks in bf16 with AdamW (two fp32 moments),
as this repository runs each strategy (bytes per rank):

| strategy | weights | gradients | optimizer state | held while computing |
| --- | --- | --- | --- | --- |
| single | 4P (fp32; autocast computes in bf16) | 4P | 8P | 2P: autocast's cached bf16 copies |
| ddp | 4P | 4P + 4P (torch's all-reduce buckets) | 8P | 2P |
| deepspeed ZeRO-1 | 2P (bf16) + 4P/W (fp32 master) | 2P | 8P/W | - |
| deepspeed ZeRO-2 | 2P + 4P/W | 2P/W | 8P/W | - |
| deepspeed ZeRO-3 | 2P/W + 4P/W | 2P/W | 8P/W | 2(M + F): gathered bf16 modules, M the largest, F its prefetch bucket |
| fsdp | 4P/W (fp32, the master weights) | 4P/W (fp32) | 8P/W | 2(R + 2B) + 4B: gathered bf16 root and two blocks, one block's fp32 gradients |

R is the root's parameters (embeddings, final LayerNorm; the head is tied), B one block's,
F ds_config.json's stage3_prefetch_bucket_size (5e7). `--fsdp_accumulation=unsharded`
adds 2P + 4P (whole weights and gradients) while a step accumulates. The ZeRO rows follow
the ZeRO paper's accounting (Rajbhandari et al. 2020: 2 + 2 + 12 bytes per parameter).

Activations are the same for every strategy here (all of them split the batch, none the
layers): per micro-batch of b sequences of T tokens, 34·L·b·T·C bytes inside the blocks
(Korthikanti et al. 2022, with flash attention: no T² term) plus about 6·b·T·V for the
logits (bf16, and their fp32 log-softmax under autocast; `--fused_linear_loss` never builds them).
"""
from __future__ import annotations

import dataclasses

import torch

from gpt.config import ModelConfig
from gpt.errors import GPTError
from gpt.flags import opt, parse_args
from gpt.model import GPT

USAGE = "usage: python launch/bench.py strategies [--key=value ...]"
GPT2 = {"124M": (12, 12, 768), "350M": (24, 16, 1024), "1.5B": (48, 25, 1600)}  # (n_layer, n_head, n_embd)
STRATEGIES = ("single", "ddp", "ZeRO-1", "ZeRO-2", "ZeRO-3", "fsdp")
ZERO3_PREFETCH = 50_000_000  # ds_config.json, stage3_prefetch_bucket_size


@dataclasses.dataclass
class MemoryConfig:
    models: str = opt(",".join(GPT2), "comma-separated GPT-2 sizes: " + ", ".join(GPT2))
    ranks: str = opt("8,64", "comma-separated world sizes")
    batch_size: int = opt(12, "sequences per micro-batch (nanoGPT's GPT-2 setting)")
    block_size: int = opt(1024, "tokens per sequence")
    vocab_size: int = opt(50257, "GPT-2's vocabulary")


@dataclasses.dataclass
class Shape:
    params: int  # P
    root: int  # R: outside the blocks
    block: int  # B: one block
    largest_module: int  # M: the largest parameter-holding module (ZeRO-3 gathers per module)
    n_layer: int
    n_embd: int


def gpt2_shape(size: str, block_size: int, vocab_size: int) -> Shape:
    """Counted on the meta device: no memory, the exact parameter counts of our GPT (GPT-2 has biases)."""
    n_layer, n_head, n_embd = GPT2[size]
    with torch.device("meta"):
        model = GPT(ModelConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                                n_embd=n_embd, bias=True))
    params = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return Shape(params, params - n_layer * block, block, largest, n_layer, n_embd)


def per_rank(strategy: str, s: Shape, world: int) -> dict[str, float]:
    """Bytes per rank: weights, gradients, optimizer state, held while computing (the table in the docstring)."""
    P, W = s.params, world
    table = {
        "single": (4 * P, 4 * P, 8 * P, 2 * P),
        "ddp": (4 * P, 8 * P, 8 * P, 2 * P),
        "ZeRO-1": (2 * P + 4 * P / W, 2 * P, 8 * P / W, 0),
        "ZeRO-2": (2 * P + 4 * P / W, 2 * P / W, 8 * P / W, 0),
        "ZeRO-3": (6 * P / W, 2 * P / W, 8 * P / W, 2 * min(P, s.largest_module + ZERO3_PREFETCH)),
        "fsdp": (4 * P / W, 4 * P / W, 8 * P / W, 2 * (s.root + 2 * s.block) + 4 * s.block),
    }
    return dict(zip(("weights", "gradients", "optimizer", "computing"), table[strategy]))


def activations(s: Shape, batch: int, block_size: int, vocab_size: int) -> float:
    return 34 * s.n_layer * batch * block_size * s.n_embd + 6 * batch * block_size * vocab_size


def main(argv: list[str]) -> None:
    cfg = parse_args(MemoryConfig, argv, USAGE)
    sizes = [m.strip() for m in cfg.models.split(",")]
    unknown = [m for m in sizes if m not in GPT2]
    if unknown:
        raise GPTError(f"unknown model size {unknown[0]!r}: use some of {', '.join(GPT2)}.")
    try:
        worlds = [int(w) for w in cfg.ranks.split(",")]
    except ValueError:
        raise GPTError(f"--ranks={cfg.ranks!r} must be comma-separated integers, e.g. 8,64.") from None
    gib = lambda b: f"{b / 2**30:.2f}"
    shapes = {size: gpt2_shape(size, cfg.block_size, cfg.vocab_size) for size in sizes}
    print("GiB per rank for GPT-2 " + ", ".join(f"{size} ({s.params:,} parameters)" for size, s in shapes.items())
          + f"; activations per micro-batch of {cfg.batch_size} x {cfg.block_size} tokens, the same for every strategy")
    print("| model | ranks | strategy | weights | gradients | optimizer | held computing | total w/o activations | "
          "activations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, shape in shapes.items():
        act = gib(activations(shape, cfg.batch_size, cfg.block_size, cfg.vocab_size))
        for world in worlds:
            for strategy in STRATEGIES:
                if strategy == "single" and world != worlds[0]:
                    continue
                w = 1 if strategy == "single" else world
                m = per_rank(strategy, shape, w)
                print(f"| {size} | {w} | {strategy} | {gib(m['weights'])} | "
                      f"{gib(m['gradients'])} | {gib(m['optimizer'])} | {gib(m['computing'])} | "
                      f"{gib(sum(m.values()))} | {act} |")
