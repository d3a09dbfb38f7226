"""Stand-ins for GPT-2's files, made here because OpenAI's cannot be downloaded on the test machines.

- `made_up_bpe`: a small byte-level BPE (256 bytes + merges learned on the test text + end-of-text),
  given both ways GPT-2's is: as vocab.json + merges.txt (a Hugging Face snapshot) and as a tiktoken
  Encoding with GPT-2's split pattern. Ids follow GPT-2's numbering: bytes in GPT-2's order, then merges.
- `tiny_hf_gpt2`: a random transformers GPT2LMHeadModel (2 layers, 2 heads, 32 wide, 64 positions) saved with
  save_pretrained, every weight perturbed so that no mapping mistake can hide behind LayerNorm's ones and
  zero biases.
- `hf_cache`: both laid out as the Hugging Face cache holds openai-community/gpt2.
"""
from __future__ import annotations

import json
from pathlib import Path

import tiktoken
import torch
from tiktoken_ext.openai_public import r50k_pat_str

from data.gpt2_files import byte_to_unicode, unspell
from data.subword import EOT_TEXT

REVISION = "0123456789abcdef0123456789abcdef01234567"


def made_up_bpe(folder: Path, texts: list[str], vocab_size: int = 300) -> tiktoken.Encoding:
    """Write vocab.json and merges.txt of a BPE trained on `texts` into folder; return the same BPE for tiktoken."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    singles = sorted(byte_to_unicode().values())  # GPT-2 numbers bytes by their character: '!' = 0, 'Ġ' = 220
    vocab = {c: i for i, c in enumerate(singles)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    eot = len(vocab)
    vocab[EOT_TEXT] = eot
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    ranks = {unspell(text): i for text, i in vocab.items() if i != eot}
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT_TEXT: eot})


def tiny_hf_gpt2(folder: Path, vocab_size: int, activation: str = "gelu", seed: int = 0, eot: int | None = None):
    """Save a random GPT2LMHeadModel to folder (config.json + model.safetensors); return the model (eval mode)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eot = vocab_size - 1 if eot is None else eot
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size,
                                       activation_function=activation, bos_token_id=eot, eos_token_id=eot))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def hf_cache(root: Path, texts: list[str]) -> tuple[Path, Path, tiktoken.Encoding]:
    """A Hugging Face cache under root holding a made-up openai-community/gpt2; returns (cache, snapshot, encoding)."""
    repo = root / "models--openai-community--gpt2"
    snapshot = repo / "snapshots" / REVISION
    encoding = made_up_bpe(snapshot, texts)
    tiny_hf_gpt2(snapshot, encoding.n_vocab)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return root, snapshot, encoding
