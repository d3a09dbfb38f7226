"""Sampling: reproducible with a seed, the KV cache changes nothing, the window moves as promised,
batched rows equal rows drawn alone, the compiled step changes nothing, filters keep what they promise."""
import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

import gpt.model
from gpt.config import ModelConfig
from gpt.generate import decode_stream, filter_logits, generate, next_token, window_start
from gpt.model import GPT

BLOCK = 16


def model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=BLOCK, vocab_size=30, n_layer=2, n_head=2, n_embd=32, bias=True)
    return GPT(ModelConfig(**{**cfg, **kw})).eval()


def run(m, use_cache, seed=3, **kw):
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.tensor([[1, 2, 3]])
    return generate(m, prompt, 40, generator=gen, use_cache=use_cache, **kw)


def reference(m, prompt, n, seed, shift, temperature=1.0, top_k=None, top_p=None):
    """Cache-free generation written out: the window moves `shift` tokens whenever it would pass the block.
    shift=1 is nanoGPT's loop (`idx[:, -block_size:]`, logits of the last position)."""
    gen = torch.Generator().manual_seed(seed)
    idx, start = prompt, 0
    with torch.no_grad():
        for _ in range(n):
            while idx.size(1) - start > BLOCK:
                start += shift
            logits = m(idx[:, start:], last_only=True)[0][:, -1, :]
            idx = torch.cat((idx, next_token(logits, temperature, top_k, top_p, gen)), dim=1)
    return idx


SETTINGS = ({"temperature": 1.0}, {"temperature": 0.0}, {"temperature": 0.8, "top_k": 5, "top_p": 0.9})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run their ops on one thread anyway; a second OpenMP thread only waits when another process
    holds the second core (measured at load 17 on the 2-core box: this file in 68 s, against 431 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_same_seed_same_sample_other_seed_other_sample():
    m = model()
    assert torch.equal(run(m, True), run(m, True))
    assert not torch.equal(run(m, True), run(m, True, seed=4))


def test_kv_cache_generation_equals_generation_without_cache():
    # 40 new tokens after a 3-token prompt slides well past block_size=16
    m = model()
    for kw in SETTINGS:
        assert torch.equal(run(m, True, **kw), run(m, False, **kw))


def test_window_shift_1_is_nanogpts_generation_exactly():
    m = model()
    for kw in SETTINGS:
        nanogpt = reference(m, torch.tensor([[1, 2, 3]]), 40, 3, shift=1, **kw)
        assert torch.equal(run(m, True, window_shift=1, **kw), nanogpt)
        assert torch.equal(run(m, False, window_shift=1, **kw), nanogpt)


@pytest.mark.parametrize("shift", [3, 8, 16])
def test_chunked_window_equals_cache_free_generation_over_the_same_contexts(shift):
    m = model()
    for kw in SETTINGS:
        same_contexts = reference(m, torch.tensor([[1, 2, 3]]), 40, 3, shift=shift, **kw)
        assert torch.equal(run(m, True, window_shift=shift, **kw), same_contexts)
    # and those are other contexts than nanoGPT's: the logits after 30 tokens differ
    seq = run(m, False, window_shift=1)[:, :30]
    with torch.no_grad():
        chunked = m(seq[:, window_start(30, BLOCK, shift):], last_only=True)[0]
        assert not torch.allclose(chunked, m(seq[:, -BLOCK:], last_only=True)[0])


def test_the_window_starts_at_a_multiple_of_the_shift_and_holds_at_most_a_block():
    for shift in (1, 3, 8, 16):
        for length in range(1, 80):
            start = window_start(length, BLOCK, shift)
            assert start % shift == 0 and 0 < length - start <= BLOCK
            assert start == 0 or length - (start - shift) > BLOCK  # the window moved no further than it had to
    assert [window_start(n, BLOCK, 1) for n in (5, 16, 17, 40)] == [0, 0, 1, 24]  # nanoGPT's idx[:, -16:]


def test_past_the_block_the_default_window_reads_a_prefill_once_per_half_block():
    m = model()
    lengths = []
    forward = m.forward
    m.forward = lambda idx, *a, **k: lengths.append(idx.size(1)) or forward(idx, *a, **k)
    run(m, True)
    # the 3-token prompt; then, each time the window is full, its last 9 tokens (block 16 - shift 8 + 1)
    prefills = [n for n in lengths if n > 1]
    assert prefills == [3] + [9] * 4 and len(lengths) == 40  # 43 tokens: windows at 0, 8, 16, 24, 32


def test_batched_rows_equal_the_same_rows_generated_alone():
    m = model()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = generate(m, prompts, 40, generator=gens([7, 8, 9]), temperature=0.9)
    for i, seed in enumerate([7, 8, 9]):
        assert torch.equal(batch[i:i + 1], generate(m, prompts[i:i + 1], 40, generator=gens([seed]), temperature=0.9))
    assert not torch.equal(batch[0], batch[2])  # same prompt, own seed, own sample


def test_compiled_decode_step_gives_the_eager_tokens(monkeypatch):
    # a cache that outlives the test run (measured at load 8-15 on the 2 shared cores: ~45 s cold, ~20 s warm,
    # most of it dynamo tracing, which no cache saves); one layer, as tracing time grows with layers
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt" / "inductor-tests"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    m = model(n_layer=1)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    # 30 tokens pass the block: prefills run eager between compiled steps; a recompile per token would fail
    assert torch.equal(generate(m, prompts, 30, temperature=0.0, compile=True),
                       generate(m, prompts, 30, temperature=0.0))


def sliding_window_attention(q, k, v, causal=True, dropout_p=0.0, impl="auto", **_):
    """Causal attention in which each query sees only the last BLOCK positions, itself included."""
    i = torch.arange(q.size(-2))
    hidden = (i[None, :] > i[:, None]) | (i[None, :] <= i[:, None] - BLOCK)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1) @ v


def test_rope_rolling_cache_decode_equals_full_recomputation_with_sliding_window_attention(monkeypatch):
    m = model(pos_emb="rope")
    torch.manual_seed(1)
    seq = torch.randint(0, 30, (2, 3 * BLOCK))
    # the reference: the same weights (RoPE has no position table) over the whole sequence at once
    wide = GPT(dataclasses.replace(m.config, block_size=seq.size(1))).eval()
    wide.load_state_dict(m.state_dict())
    with torch.no_grad():
        cache = m.new_cache(2, seq.device, torch.float32)
        steps = [m(seq[:, :5], cache=cache)[0]]
        for i in range(5, seq.size(1)):  # one token at a time; past the block the cache rolls
            steps.append(m(seq[:, i:i + 1], cache=cache)[0])
        cropped = m(seq[:, -BLOCK:], last_only=True)[0]  # nanoGPT's crop-and-recompute, for the last token
        monkeypatch.setattr(gpt.model, "attention", sliding_window_attention)
        full = wide(seq)[0]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    # two layers: tokens gone from the window still reach the last token through the first layer
    assert not torch.allclose(full[:, -1:], cropped, rtol=1e-4, atol=1e-5)


def test_rope_generation_rolls_the_cache_and_window_shift_1_gives_nanogpts_contexts():
    m = model(pos_emb="rope")
    lengths = []
    forward = m.forward
    m.forward = lambda idx, *a, **k: lengths.append(idx.size(1)) or forward(idx, *a, **k)
    for kw in SETTINGS:
        lengths.clear()
        run(m, True, **kw)
        assert [n for n in lengths if n > 1] == [3]  # the prompt's prefill, then one-token steps only
        nanogpt = reference(m, torch.tensor([[1, 2, 3]]), 40, 3, shift=1, **kw)
        assert torch.equal(run(m, True, window_shift=1, **kw), nanogpt)
        assert torch.equal(run(m, False, **kw), nanogpt)  # without a cache: nanoGPT's crop


def test_greedy_is_deterministic_whatever_the_seed():
    m = model()
    assert torch.equal(run(m, True, seed=1, temperature=0.0), run(m, True, seed=2, temperature=0.0))


def test_output_keeps_the_prompt_and_adds_max_new_tokens():
    out = run(model(), True)
    assert out.shape == (1, 43) and out[0, :3].tolist() == [1, 2, 3]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_streamed_text_holds_back_split_characters_and_equals_the_whole_decode():
    # a byte-level tokenizer: one id per UTF-8 byte, so 'é' and '☃' each span several ids
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")
    ids = list("héllo ☃ snow".encode("utf-8"))
    pieces = list(decode_stream(iter(ids), decode))
    assert "".join(pieces) == decode(ids) == "héllo ☃ snow"
    assert "\ufffd" not in "".join(pieces) and "é" in pieces and "☃" in pieces
    truncated = ids[:-len("☃ snow".encode()) + 1]  # ends inside the snowman: given out as it decodes
    assert "".join(decode_stream(iter(truncated), decode)) == decode(truncated)
