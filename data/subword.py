"""Subword tokenizers: GPT-2's (tiktoken) and a byte-level BPE trained on the corpus (`tokenizers`).

Both put an end-of-text token between documents. tiktoken downloads GPT-2's two
encoding files on first use and caches them (TIKTOKEN_CACHE_DIR); offline, either that
cache or a Hugging Face snapshot of GPT-2 (vocab.json + merges.txt, read through
`tokenizers` by data/gpt2_files.py) must be on the machine. The trained BPE needs nothing from outside: its
whole definition lives in meta.json (and tokenizer.json beside it, loadable by
`tokenizers.Tokenizer.from_file`).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import numpy as np

from gpt.errors import GPTError

EOT_TEXT = "<|endoftext|>"
GPT2_VOCAB, GPT2_EOT = 50257, 50256


def gpt2_meta() -> dict[str, Any]:
    """The tokenizer entry of a dataset in GPT-2 tokens (llm.c's, nanoGPT's openwebtext)."""
    return {"kind": "gpt2", "vocab_size": GPT2_VOCAB, "eot": GPT2_EOT}


def load_gpt2_encoding() -> Any:
    """GPT-2's encoding: tiktoken's, else one read from a cached Hugging Face snapshot's vocab.json and
    merges.txt (same ids), else a GPTError saying how to bring either onto an offline machine."""
    try:
        import tiktoken
    except ImportError:
        raise GPTError("--tokenizer=gpt2 needs tiktoken: `pip install -r requirements.txt`.") from None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # tiktoken surfaces network, cache and hash failures as assorted types
        failure = f"{type(err).__name__}: {str(err)[:160]}"
    from gpt.hf_snapshot import download_hint, find_gpt2_tokenizer
    folder, looked = find_gpt2_tokenizer()
    if folder is not None:
        from data.gpt2_files import SnapshotEncoding
        return SnapshotEncoding(folder)
    raise GPTError(
        f"GPT-2's encoding could not be loaded: tiktoken failed ({failure}) and no Hugging Face snapshot of GPT-2 "
        f"with vocab.json and merges.txt is cached (looked in {looked[0].parent}). tiktoken fetches its two files "
        "on first use, which this machine cannot do. Bring either one: on a machine with internet run "
        "`TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"`, copy DIR here and "
        f"set TIKTOKEN_CACHE_DIR=DIR; or {download_hint('gpt2', 'vocab.json merges.txt')}. Or use "
        "--tokenizer=bpe, which trains a tokenizer on your corpus offline.") from None


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 ids, end-of-text = 50256) through tiktoken or a snapshot's files."""

    kind = "gpt2"

    def __init__(self, encoding: Any = None):
        self.encoding = encoding if encoding is not None else load_gpt2_encoding()
        self.eot = int(self.encoding.eot_token)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "GPT2Tokenizer":
        tok = cls()
        if tok.vocab_size != int(meta["vocab_size"]) or tok.eot != int(meta.get("eot", tok.eot)):
            raise GPTError(f"the dataset's GPT-2 tokenizer has {meta['vocab_size']} ids, the GPT-2 encoding "
                           f"loaded here has {tok.vocab_size}: point TIKTOKEN_CACHE_DIR (or HF_HOME) at GPT-2's files.")
        return tok

    @property
    def vocab_size(self) -> int:
        return int(self.encoding.n_vocab)

    @property
    def separator(self) -> list[int]:
        return [self.eot]

    def encode(self, text: str) -> list[int]:
        # ordinary: a literal "<|endoftext|>" in a document is text, not a document boundary
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self.encode(text), dtype=np.uint32)

    def decode(self, ids: Iterable[int]) -> str:
        # a model whose vocabulary is padded (50304) can emit ids tiktoken does not know
        return self.encoding.decode([int(i) for i in ids if int(i) < self.vocab_size])

    def to_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eot": self.eot}


class BPETokenizer:
    """A byte-level BPE from the `tokenizers` library, with `<|endoftext|>` as its special token."""

    kind = "bpe"

    def __init__(self, definition: dict[str, Any]):
        from tokenizers import Tokenizer
        self.definition = definition
        self.tokenizer = Tokenizer.from_str(json.dumps(definition))
        eot = self.tokenizer.token_to_id(EOT_TEXT)
        if eot is None:
            raise GPTError(f"the BPE tokenizer in this dataset has no {EOT_TEXT} token; prepare the dataset again.")
        self.eot = int(eot)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "BPETokenizer":
        return cls(meta["definition"])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def separator(self) -> list[int]:
        return [self.eot]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self.encode(text), dtype=np.uint32)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) < self.vocab_size], skip_special_tokens=False)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eot": self.eot, "definition": self.definition}

    def save(self, path: str) -> None:
        """tokenizer.json, for tools that read the `tokenizers` format."""
        self.tokenizer.save(path)


def train_bpe(texts: Iterator[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` ids (256 bytes + end-of-text + merges) on `texts`.

    Training is deterministic for the same texts (checked: identical merges on rerun).
    """
    if vocab_size < 257:
        raise GPTError(f"--vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least 257 "
                       "(256 bytes and the end-of-text token).")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(json.loads(tok.to_str()))
