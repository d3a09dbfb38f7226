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


RECIPE = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True,
              logit_softcap=15.0)
ARCHITECTURES = [dict(pos_emb="rope"), dict(norm="rmsnorm"), dict(qk_norm=True), dict(mlp="relu2"),
                 dict(mlp="swiglu"), dict(tie_embeddings=False), dict(logit_softcap=5.0),
                 {**RECIPE, "zero_init": False}]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_every_architecture_is_causal_and_its_kv_cache_equals_the_full_forward(arch):
    model = small(attention="math", **arch).eval()
    idx = torch.randint(0, 50, (2, 24))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 50
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, idx.device, torch.float32)
        parts = [model(idx[:, :10], cache=cache)[0], model(idx[:, 10:11], cache=cache)[0],
                 model(idx[:, 11:24], cache=cache)[0]]
        other, _ = model(changed)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    assert torch.equal(full[:, :12], other[:, :12]) and not torch.allclose(full[:, 12:], other[:, 12:])


def test_the_defaults_are_nanogpts_gpt():
    cfg = ModelConfig()
    assert (cfg.pos_emb, cfg.norm, cfg.qk_norm, cfg.mlp, cfg.tie_embeddings, cfg.zero_init, cfg.logit_softcap) == (
        "learned", "layernorm", False, "gelu", True, False, 0.0)
    names = {n for n, _ in small().named_parameters()}
    assert "transformer.wpe.weight" in names and not any("norm" in n for n in names)


def test_rope_replaces_the_position_table_and_an_untied_head_has_its_own_weights():
    model = small(pos_emb="rope", tie_embeddings=False)
    assert "wpe" not in model.transformer
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_zero_init_starts_every_block_as_the_identity_and_predicts_uniformly():
    model = small(zero_init=True, tie_embeddings=False)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            assert torch.count_nonzero(p) == 0, name
    idx = torch.randint(0, 50, (2, 16))
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)
    # tied, the head is the embedding and keeps its random start
    assert torch.count_nonzero(small(zero_init=True).lm_head.weight) > 0


def test_soft_cap_bounds_the_logits_smoothly():
    model = small(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)
        logits, _ = model(torch.randint(0, 50, (2, 16)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_swiglu_keeps_the_mlps_parameter_count():
    gelu, swiglu = small(n_embd=96), small(n_embd=96, mlp="swiglu")
    assert swiglu.transformer.h[0].mlp.c_fc.weight.shape == (2 * 256, 96)  # 8/3 x 96 = 256
    assert abs(swiglu.num_params() - gelu.num_params()) / gelu.num_params() < 0.02


def test_a_checkpoint_from_before_the_architecture_keys_loads_as_it_was_trained():
    from gpt.checkpoint import check_resumable, model_from_checkpoint

    old = small()
    keys = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")  # all an old model_config held
    ckpt = {"model_config": {k: getattr(old.config, k) for k in keys} | {"dropout": 0.0, "attention": "auto"},
            "model": old.state_dict()}
    loaded = model_from_checkpoint(ckpt).eval()
    assert loaded.config == old.config
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], old.eval()(idx)[0])
    check_resumable(ckpt | {"tokenizer": {}}, model=old.config, tokenizer={}, out_dir="old", dataset="tiny")


@pytest.mark.parametrize("kw, match", [
    (dict(pos_emb="alibi"), "pos_emb='alibi' is not one of learned, rope"),
    (dict(mlp="geglu"), "mlp='geglu' is not one of gelu, relu2, swiglu"),
    (dict(pos_emb="rope", n_embd=36, n_head=4), "head size n_embd/n_head = 9 is odd"),
])
def test_impossible_architectures_are_explained(kw, match):
    from gpt.errors import GPTError

    with pytest.raises(GPTError, match=match):
        small(**kw)
