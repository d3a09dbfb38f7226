"""The KV cache alone: chunks and single tokens attend as full causal attention would, it rolls past
its size keeping the last keys, and a reset forgets everything."""
import pytest
import torch

from gpt.model import KVCache
from kernels.reference import attention_math

B, H, D, MAX = 2, 3, 8, 8


def cache() -> KVCache:
    return KVCache(n_layer=1, batch=B, n_head=H, max_len=MAX, head_dim=D, device=torch.device("cpu"),
                   dtype=torch.float32)


def feed(c: KVCache, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What GPT.forward does with a cache for one layer: positions, attend, advance."""
    c.positions(q.size(2))
    y = c.attend(0, q, k, v)
    c.advance(q.size(2))
    return y


def qkv(t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(B, H, t, D), torch.randn(B, H, t, D), torch.randn(B, H, t, D)


def test_chunks_and_single_tokens_attend_as_causal_attention_over_the_whole_sequence():
    torch.manual_seed(0)
    q, k, v = qkv(MAX)
    c = cache()
    parts, at = [], 0
    for t in (3, 1, 1, 2, 1):
        parts.append(feed(c, q[:, :, at:at + t], k[:, :, at:at + t], v[:, :, at:at + t]))
        at += t
    torch.testing.assert_close(torch.cat(parts, dim=2), attention_math(q, k, v, causal=True))


def test_past_its_size_the_cache_rolls_and_attends_to_the_last_max_len_keys():
    torch.manual_seed(1)
    n = 3 * MAX + 2
    q, k, v = qkv(n)
    c = cache()
    feed(c, q[:, :, :5], k[:, :, :5], v[:, :, :5])
    for i in range(5, n):
        y = feed(c, q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1])
        first = max(0, i + 1 - MAX)  # the query sees the last MAX keys, itself included
        expect = attention_math(q[:, :, i:i + 1], k[:, :, first:i + 1], v[:, :, first:i + 1], causal=False)
        torch.testing.assert_close(y, expect)
    assert int(c.pos) == n


def test_reset_forgets_every_token_without_clearing_the_buffers():
    torch.manual_seed(2)
    q, k, v = qkv(MAX)
    c = cache()
    feed(c, *qkv(MAX - 1))
    c.reset()
    assert int(c.pos) == 0 and c.k.abs().sum() > 0  # stale keys stay, masked
    torch.testing.assert_close(feed(c, q[:, :, :4], k[:, :, :4], v[:, :, :4]),
                               attention_math(q[:, :, :4], k[:, :, :4], v[:, :, :4], causal=True))


def test_a_chunk_that_does_not_fit_is_refused():
    c = cache()
    feed(c, *qkv(MAX - 2))
    with pytest.raises(ValueError, match="one token at a time"):
        c.positions(3)
