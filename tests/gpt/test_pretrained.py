"""--init_from=gpt2|PATH: a Hugging Face GPT-2 snapshot becomes our GPT with transformers' logits, and finetunes."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gpt.build import build_run
from gpt.config import ModelConfig, load_config
from gpt.errors import GPTError
from gpt.hf_weights import from_hf
from gpt.model import GPT
from gpt.pretrained import fit_vocab_and_context, open_snapshot, pretrained_model, read_weights
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.hf_fixtures import tiny_hf_gpt2


def hf_model(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder).eval()


def tokens(vocab, shape=(2, 64), seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_a_snapshot_gives_transformers_logits_by_path_and_by_name(offline_gpt2):
    _, folder, encoding = offline_gpt2
    idx = tokens(encoding.n_vocab)
    expected = hf_model(folder)(idx).logits
    for source in (str(folder), "gpt2"):  # a folder, and the name looked up in the Hugging Face cache
        model, tokenizer, notes = pretrained_model(source)
        assert tokenizer == {"kind": "gpt2", "vocab_size": encoding.n_vocab, "eot": encoding.eot_token} and notes == []
        worst = (model.eval()(idx)[0] - expected).abs().max().item()
        assert worst < 1e-5, worst
    print(f"largest logit difference to transformers, fp32 CPU: {worst:.2e}")


@torch.no_grad()
def test_openai_style_keys_and_mask_buffers_map_the_same(gpt2_snapshot):
    state = read_weights(gpt2_snapshot[1])
    old_style = {k.removeprefix("transformer."): v for k, v in state.items()}  # OpenAI's upload: no prefix, masks stored
    old_style["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    old_style["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    old_style["lm_head.weight"] = state["transformer.wte.weight"]
    a, b = from_hf(state, 2, "new"), from_hf(old_style, 2, "old")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["transformer.h.0.attn.c_attn.weight"].shape == (96, 32)  # Conv1D (in, out) became Linear (out, in)


def test_tanh_gelu_snapshots_load_with_a_note_on_the_difference(tmp_path):
    hf = tiny_hf_gpt2(tmp_path, vocab_size=100, activation="gelu_new")
    model, _, notes = pretrained_model(str(tmp_path))
    assert len(notes) == 1 and "tanh approximation" in notes[0]
    idx = tokens(100)
    with torch.no_grad():
        worst = (model.eval()(idx)[0] - hf(idx).logits).abs().max().item()
    assert 1e-7 < worst < 1e-2, worst  # the exact GELU is not the approximation, but close to it


def test_gpt2_variants_we_cannot_compute_are_refused(tmp_path):
    tiny_hf_gpt2(tmp_path, vocab_size=100)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(GPTError, match="n_inner=64.*scale_attn_by_inverse_layer_idx"):
        open_snapshot(str(tmp_path))


def test_a_missing_snapshot_names_where_it_looked_and_how_to_get_it(offline_gpt2, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(GPTError) as err:
        open_snapshot("gpt2-medium")
    for words in (str(tmp_path / "cache" / "models--openai-community--gpt2-medium"), "nothing is downloaded",
                  "hf download openai-community/gpt2-medium config.json model.safetensors", "--init_from=PATH"):
        assert words in str(err.value)
    with pytest.raises(GPTError, match="needs config.json and one of model.safetensors"):
        open_snapshot(str(tmp_path))


@torch.no_grad()
def test_padding_the_vocabulary_keeps_every_real_logit_and_bounds_the_loss(gpt2_snapshot):
    folder = gpt2_snapshot[1]
    model, _, _ = pretrained_model(str(folder))
    V, P = model.config.vocab_size, 35
    state = fit_vocab_and_context(model.state_dict(), 64, V + P, V)
    padded = GPT(ModelConfig(block_size=64, vocab_size=V + P, n_layer=2, n_head=2, n_embd=32, bias=True))
    padded.load_state_dict(state)
    idx = tokens(V)
    z, zp = model.eval()(idx)[0], padded.eval()(idx)[0]
    assert torch.equal(zp[..., :V], z)  # the tokenizer's ids keep their logits exactly
    torch.testing.assert_close(zp[..., V:], z.mean(-1, keepdim=True).expand(-1, -1, P), atol=1e-5, rtol=0)
    targets = tokens(V, seed=1)
    loss, loss_padded = (F.cross_entropy(a.flatten(0, 1), targets.flatten()).item() for a in (z, zp))
    logp = F.log_softmax(z, dim=-1)
    predicted = torch.log1p(P * logp.mean(-1).exp()).mean().item()  # the module docstring's formula
    assert loss_padded - loss == pytest.approx(predicted, rel=1e-3)
    assert 0 <= loss_padded - loss <= math.log1p(P / V)


def finetune_argv(gpt2_data, folder, out_dir, **overrides):
    return tiny_argv(gpt2_data, out_dir, dataset="tinygpt2", init_from=str(folder), **overrides)


def test_a_finetune_starts_from_the_snapshot_trains_and_resumes(offline_gpt2, gpt2_data, tmp_path, capsys):
    folder = offline_gpt2[1]
    cfg = load_config(finetune_argv(gpt2_data, folder, tmp_path, n_layer=6, n_embd=64, learning_rate=3e-3,
                                    max_iters=6, lr_decay_iters=10, eval_interval=3))
    run = build_run(cfg)
    printed = capsys.readouterr().out
    assert "context 16 of 64" in printed and "n_layer 6 -> 2, n_embd 64 -> 32, bias False -> True" in printed
    x, y = run.loader.eval_batch("val", 0)
    with torch.no_grad():
        ours = run.model.eval()(x, y)[1].item()
        theirs = F.cross_entropy(hf_model(folder)(x).logits.flatten(0, 1), y.flatten()).item()
    run.model.train()
    assert ours == pytest.approx(theirs, abs=1e-5)  # the run starts from the snapshot's function, context cropped
    summary = Trainer(run).run()
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in evals if r["kind"] == "eval"]
    assert summary.iters == 6 and val[-1] < val[0]
    # the run's resolved config (the snapshot's shape in it) continues the finetune
    resumed = Trainer(build_run(load_config([str(tmp_path / "config.yaml"), "--init_from=resume", "--max_iters=8"]))).run()
    assert resumed.iters == 8 and "resuming from" in capsys.readouterr().out
    with pytest.raises(GPTError, match=f"n_layer: checkpoint 2, this run 6.*{tmp_path / 'config.yaml'}"):
        build_run(load_config(tiny_argv(gpt2_data, tmp_path, dataset="tinygpt2", n_layer=6, init_from="resume")))


def test_a_finetune_checks_the_context_and_the_datasets_tokenizer(offline_gpt2, gpt2_data, tiny_data, tmp_path):
    folder = offline_gpt2[1]
    with pytest.raises(GPTError, match="longer than the 64 learned positions.*--block_size=64 or less"):
        build_run(load_config(finetune_argv(gpt2_data, folder, tmp_path, block_size=128)))
    with pytest.raises(GPTError, match="dataset 'tiny' is tokenized with char.*--tokenizer=gpt2"):
        build_run(load_config(tiny_argv(tiny_data, tmp_path, init_from=str(folder))))


def test_a_finetune_into_another_architecture_is_refused(offline_gpt2, gpt2_data, tmp_path):
    folder = offline_gpt2[1]
    with pytest.raises(GPTError, match="pos_emb=rope, qk_norm=True.*GPT2LMHeadModel"):
        build_run(load_config(finetune_argv(gpt2_data, folder, tmp_path, pos_emb="rope", qk_norm=True)))
