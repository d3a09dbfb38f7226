"""The GPT itself: causality, initial loss, capacity to learn, size, attention paths."""
import math

import pytest
import torch

from gpt.config import KernelConfig, ModelConfig
from gpt.model import GPT


def small(attention: str = "auto", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_embd=32, bias=True)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg), kernels=KernelConfig(attention=attention))


@pytest.mark.parametrize("attention", ["torch", "math"])
def test_changing_a_future_token_never_changes_earlier_logits(attention):
    model = small(attention=attention).eval()
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_initial_loss_is_about_ln_vocab():
    model = small(vocab_size=65)
    idx = torch.randint(0, 65, (8, 32))
    _, loss = model(idx, torch.randint(0, 65, (8, 32)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_a_tiny_model_overfits_one_batch():
    model = small()
    idx = torch.randint(0, 50, (4, 32))
    targets = torch.randint(0, 50, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_parameter_count_matches_nanogpt_shakespeare_char():
    # nanoGPT's train_shakespeare_char.py model (vocab 65, bias off) reports "number of parameters: 10.65M"
    model = GPT(ModelConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, bias=False), dropout=0.2)
    assert model.num_params(non_embedding=False) == 10_745_088
    assert model.num_params() == 10_646_784


def test_output_head_is_tied_to_token_embedding():
    model = small()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_torch_and_math_attention_agree():
    a, b = small(attention="torch").eval(), small(attention="math").eval()
    idx = torch.randint(0, 50, (2, 32))
    with torch.no_grad():
        la, _ = a(idx)
        lb, _ = b(idx)
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["torch", "math"])
def test_kv_cache_forward_equals_full_forward(attention):
    model = small(attention=attention).eval()
    idx = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, idx.device, torch.float32)
        parts = [model(idx[:, :10], cache=cache)[0], model(idx[:, 10:11], cache=cache)[0],
                 model(idx[:, 11:24], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_ignored_targets_do_not_count():
    model = small().eval()
    idx = torch.randint(0, 50, (2, 16))
    targets = torch.randint(0, 50, (2, 16))
    masked = targets.clone()
    masked[:, 8:] = -1
    with torch.no_grad():
        _, full = model(idx[:, :8], targets[:, :8])
        _, partial = model(idx, masked)
    torch.testing.assert_close(partial, full)
