"""Write a checkpoint as a Hugging Face GPT-2 folder that transformers loads: `GPT2LMHeadModel.from_pretrained(DIR)`.

The folder holds config.json and model.safetensors (gpt/hf_weights.py maps the names and
transposes to Conv1D; exact GELU and no dropout, so transformers computes our logits), plus
the tokenizer:
- GPT-2's (`gpt2`): vocab.json + merges.txt, rebuilt from the encoding's token bytes (tiktoken's or a
  snapshot's), tokenizer.json for the fast tokenizer, and tokenizer_config.json;
- a BPE trained by data/prepare.py (`bpe`): its tokenizer.json and tokenizer_config.json;
- characters (`char`): no Hugging Face tokenizer exists for it; the character list is in meta.json.
meta.json, always written, holds our tokenizer entry (as a dataset's meta.json does), so
`--init_from=DIR` can check that a dataset's ids are the model's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.gpt2_files import vocab_and_merges
from data.subword import EOT_TEXT, GPT2Tokenizer
from gpt.atomic import write_text_atomic
from gpt.config import model_config_from_dict
from gpt.errors import GPTError
from gpt.hf_weights import hf_config, require_gpt2_architecture, to_hf


def export_hf(ckpt: dict[str, Any], output_dir: str | Path, source: str = "") -> list[Path]:
    """Write `ckpt` (as load_checkpoint returns it) into output_dir; returns the files written."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise GPTError("--format=hf writes model.safetensors: `pip install -r requirements.txt` installs safetensors.") from None
    model = model_config_from_dict(ckpt["model_config"])
    require_gpt2_architecture(model, "export this checkpoint in Hugging Face's GPT-2 format")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ckpt["tokenizer"]
    vocab_size = int(tokenizer["vocab_size"])
    save_file(to_hf(ckpt["model"], model, vocab_size), str(out / "model.safetensors"), metadata={"format": "pt"})
    texts = {
        "config.json": hf_config(model, vocab_size, tokenizer.get("eot")),
        "meta.json": {"tokenizer": tokenizer, "dataset": ckpt.get("dataset"), "iter_num": ckpt.get("iter_num"),
                      "exported_from": source},
        **tokenizer_files(tokenizer, model.block_size),
    }
    written = [out / "model.safetensors"]
    for name, content in texts.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=1, ensure_ascii=False) + "\n"
        write_text_atomic(out / name, text)
        written.append(out / name)
    return written


def tokenizer_files(tokenizer: dict[str, Any], block_size: int) -> dict[str, Any]:
    """The Hugging Face tokenizer files for our tokenizer entry: file name -> JSON value or text."""
    kind = tokenizer.get("kind")
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "model_max_length": block_size}
    if kind == "gpt2":
        encoding = GPT2Tokenizer.from_meta(tokenizer).encoding
        vocab, merges = vocab_and_merges(encoding.decode_single_token_bytes, encoding.n_vocab, encoding.eot_token)
        return {"vocab.json": vocab, "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
                "tokenizer.json": _gpt2_fast_tokenizer(vocab, merges),
                "tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, **special}}
    if kind == "bpe":
        return {"tokenizer.json": tokenizer["definition"],
                "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **special}}
    return {}


def _gpt2_fast_tokenizer(vocab: dict[str, int], merges: list[str]) -> dict[str, Any]:
    """tokenizer.json for GPT-2's BPE: byte-level, GPT-2's split pattern, <|endoftext|> as its special token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    return json.loads(tok.to_str())
