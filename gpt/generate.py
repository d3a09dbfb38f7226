"""Autoregressive sampling with a KV cache: temperature, top-k, top-p (nucleus), greedy."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch

from gpt.model import GPT


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set whose probability reaches top_p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens strictly more likely than it already reach top_p
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float],
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """(B, vocab) logits -> (B, 1) ids; temperature 0 is greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate_stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None,
                    generator: Optional[torch.Generator] = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new ids one at a time after the prompt idx (B, T).

    The context is the last block_size tokens, as in nanoGPT. While it fits, each
    step feeds only the new token through the KV cache; once it slides past
    block_size the positions of every token change, so the cache is rebuilt from
    the cropped window (exactly what the cache-free path computes).
    """
    block = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits, _ = model(idx[:, -block:], last_only=True)
        elif cache is not None and idx.size(1) <= block:
            logits, _ = model(idx[:, -1:], cache=cache, last_only=True)
        else:
            context = idx[:, -block:]
            cache = model.new_cache(idx.size(0), idx.device, model.lm_head.weight.dtype)
            logits, _ = model(context, cache=cache, last_only=True)
        token = next_token(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
        idx = torch.cat((idx, token), dim=1)
        yield token


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompt followed by max_new_tokens sampled ids, (B, T + max_new_tokens)."""
    new = list(generate_stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx] + new, dim=1) if new else idx


def decode_stream(ids: Iterable[int], decode: Callable[[list[int]], str]) -> Iterator[str]:
    """Text pieces for ids as they arrive; joined, they equal `decode` of all the ids.

    A byte-level tokenizer can split one character over several tokens, and decoding a part
    of it gives U+FFFD: such pieces are held back until the character is complete (or the ids
    end). Decoding restarts after each piece given out, which is clean at a character boundary.
    """
    pending: list[int] = []
    for i in ids:
        pending.append(i)
        piece = decode(pending)
        if not piece.endswith("\ufffd"):
            yield piece
            pending = []
    if pending:
        yield decode(pending)
