"""Autoregressive sampling with a KV cache: temperature, top-k, top-p (nucleus), greedy.

The context of each prediction is a window of at most block_size tokens; what matters for
speed is how often the KV cache must be rebuilt once a sample outgrows it:

- the chunked window (learned positions, and any model given `window_shift`): the window
  moves `window_shift` tokens at a time. It starts at a multiple of the shift
  (`window_start`), the cache is rebuilt from it once (a prefill), and the next
  window_shift - 1 tokens are one-token steps. window_shift=1 is nanoGPT's window (a prefill
  of the whole block for every token); the default, half a block, costs one prefill of half a
  block per half a block of tokens. Every prediction sees exactly its window, as the
  cache-free path computing the same windows does (use_cache=False).
- the rolling cache (rotary positions, `pos_emb: rope`, unless a window_shift is given):
  attention scores depend only on distances between positions, so keys keep their
  rotation and the cache just overwrites the oldest one: every token is one step, no
  prefill ever again. This is sliding-window attention, exactly (tested): each layer
  attends to the last block_size positions. It is not nanoGPT's crop-and-recompute: the
  kept keys of layers above the first were computed while older tokens were still in
  view, so those tokens still reach the prediction through the layers (with one layer the
  two are the same). Pass window_shift=1 for nanoGPT's contexts exactly.

All rows of `idx` are generated as one batch; with one generator per row each row draws
exactly what it would draw alone. With `compile`, the one-token step is compiled once for
the cache's fixed shapes (CUDA graphs on a GPU); prefills of varying length stay eager.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from gpt.model import GPT, KVCache

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


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
               generator: Generators) -> torch.Tensor:
    """(B, vocab) logits -> (B, 1) ids; temperature 0 is greedy.

    `generator`: one for the whole batch, or a list with one per row (row i then draws from
    generator i alone, so its sample does not depend on the other rows).
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], num_samples=1, generator=g) for p, g in zip(probs, generator)])
    return torch.multinomial(probs, num_samples=1, generator=generator)


def rolls_cache(model: GPT) -> bool:
    """Whether the model can roll its cache past block_size (rotary positions: keys never need re-rotating)."""
    return getattr(model.config, "pos_emb", "learned") == "rope"


def default_window_shift(block_size: int) -> int:
    """Half a block: one prefill of half a block per half a block of new tokens."""
    return max(1, block_size // 2)


def window_plan(model: GPT, window_shift: Optional[int], use_cache: bool) -> tuple[bool, int]:
    """(rolling, shift): whether the cache rolls, and how far the window jumps when it must move.

    A RoPE model with a cache and no window_shift rolls; without a cache it then crops as
    nanoGPT does (shift 1), the nearest cache-free equivalent. Otherwise the window moves by
    window_shift, half a block by default.
    """
    block = model.config.block_size
    rope = rolls_cache(model)
    shift = window_shift or (1 if rope else default_window_shift(block))
    if not 1 <= shift <= block:
        raise ValueError(f"window_shift={shift} must be in 1 .. block_size={block}")
    return rope and use_cache and window_shift is None, shift


def window_start(length: int, block_size: int, shift: int) -> int:
    """Where the context for predicting token number `length` starts (tokens 0 .. length-1 exist).

    The smallest multiple of `shift` that leaves at most block_size tokens: the window stays put
    until it is full, then jumps `shift` tokens. shift=1 is nanoGPT's `idx[:, -block_size:]`.
    """
    over = length - block_size
    return 0 if over <= 0 else -(-over // shift) * shift


def cache_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """The dtype keys and values are computed in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.lm_head.weight.dtype


def decode_step(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """(B, 1, vocab) logits after feeding one token (B, 1) per row through the cache."""
    return model(token, cache=cache, last_only=True)[0]


class CachedDecoder:
    """Next-token logits from a KV cache: a prefill when the window (re)starts, one-token steps between.

    With `compile`, the step is torch.compile'd with fixed shapes (batch, one token, the cache's
    block_size slots) and the position as a tensor, so one graph serves every step; on CUDA in
    mode reduce-overhead (CUDA graphs), with the cache's tensors at fixed addresses.
    """

    def __init__(self, model: GPT, batch: int, device: torch.device, rolling: bool = False, compile: bool = False):
        self.model = model
        self.cache = model.new_cache(batch, device, cache_dtype(model, device))
        self.rolling = rolling  # past block_size, steps roll the cache instead of a new window's prefill
        self.start: Optional[int] = None  # where the cached window starts in the sequence
        self.cuda_graphs = compile and device.type == "cuda"
        self.step: Callable[[GPT, torch.Tensor, KVCache], torch.Tensor] = decode_step
        if compile:
            if self.cuda_graphs:  # the graph reads and writes these in place: they must never move
                for t in (self.cache.k, self.cache.v, self.cache.pos, self.cache.slot_ids):
                    torch._dynamo.mark_static_address(t)
            self.step = torch.compile(decode_step, fullgraph=True, dynamic=False,
                                      mode="reduce-overhead" if self.cuda_graphs else None)

    def logits(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """(B, 1, vocab) logits for the token after idx (B, T), whose context is idx[:, start:]."""
        if self.start is None or (start != self.start and not self.rolling):
            self.start = start
            self.cache.reset()
            return self.model(idx[:, start:], cache=self.cache, last_only=True)[0]
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        # a fresh (B, 1) tensor: a slice of idx has idx's strides, which grow, and a compiled step
        # guards on strides (one recompile per token, measured)
        token = idx[:, -1:].clone(memory_format=torch.contiguous_format)
        return self.step(self.model, token, self.cache)


@torch.no_grad()
def generate_stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, generator: Generators = None,
                    use_cache: bool = True, window_shift: Optional[int] = None,
                    compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new ids one at a time after the prompts idx (B, T), all rows as one batch.

    window_shift says how the context window moves once full (see `window_start`; None = half
    a block, or for a RoPE model with a cache: roll the cache). use_cache=False recomputes each
    window from scratch: the same windows, the cost of a full forward per token. `compile`
    compiles the cached one-token step.
    """
    block = model.config.block_size
    rolling, shift = window_plan(model, window_shift, use_cache)
    decoder = CachedDecoder(model, idx.size(0), idx.device, rolling, compile) if use_cache else None
    for _ in range(max_new_tokens):
        start = window_start(idx.size(1), block, shift)
        if decoder is None:
            logits = model(idx[:, start:], last_only=True)[0]
        else:
            logits = decoder.logits(idx, start)
        token = next_token(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
        idx = torch.cat((idx, token), dim=1)
        yield token


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompts followed by max_new_tokens sampled ids, (B, T + max_new_tokens)."""
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
