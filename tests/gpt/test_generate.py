"""Sampling: reproducible with a seed, the KV cache changes nothing, filters keep what they promise."""
import torch

from gpt.config import ModelConfig
from gpt.generate import decode_stream, filter_logits, generate
from gpt.model import GPT


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(block_size=16, vocab_size=30, n_layer=2, n_head=2, n_embd=32, bias=True)).eval()


def run(m, use_cache, seed=3, **kw):
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.tensor([[1, 2, 3]])
    return generate(m, prompt, 40, generator=gen, use_cache=use_cache, **kw)


def test_same_seed_same_sample_other_seed_other_sample():
    m = model()
    assert torch.equal(run(m, True), run(m, True))
    assert not torch.equal(run(m, True), run(m, True, seed=4))


def test_kv_cache_generation_equals_generation_without_cache():
    # 40 new tokens after a 3-token prompt slides well past block_size=16
    m = model()
    for kw in ({"temperature": 1.0}, {"temperature": 0.0}, {"temperature": 0.8, "top_k": 5, "top_p": 0.9}):
        assert torch.equal(run(m, True, **kw), run(m, False, **kw))


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
