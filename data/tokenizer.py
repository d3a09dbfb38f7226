"""Tokenizers, saved inside meta.json (and so in checkpoints) so a dataset and its models decode alike.

Three kinds: `char` (one id per distinct character, here), `gpt2` (tiktoken's
GPT-2 encoding) and `bpe` (a byte-level BPE trained on the corpus), the last two
in data/subword.py. Each has `vocab_size`, `encode`, `encode_array`, `decode`,
`separator` (the ids put between two documents) and `to_meta`.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

import numpy as np

from gpt.errors import GPTError


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...
    @property
    def separator(self) -> list[int]: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_array(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_meta(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per distinct character; `from_text` orders the ids as the sorted characters.

    Documents are separated by a newline, as the single-text corpora this is made
    for always were: a character vocabulary has no end-of-text token.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        if not self.chars:
            raise GPTError("cannot build a character vocabulary from empty text.")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars):
            raise GPTError("a character vocabulary lists the same character twice; rebuild the dataset.")

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def separator(self) -> list[int]:
        return self.encode("\n")

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; characters outside the vocabulary are named in the error."""
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self.stoi})
            shown = ", ".join(repr(ch) for ch in unknown[:20])
            raise GPTError(
                f"the text contains {len(unknown)} character(s) that are not in this dataset's vocabulary: {shown}. "
                f"Use only characters the model was trained on ({self.vocab_size} of them)."
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        """Encode a large text without building a Python list per character."""
        table = np.full(max(ord(c) for c in self.chars) + 1, -1, dtype=np.int64)
        for ch, i in self.stoi.items():
            table[ord(ch)] = i
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.where(codes < len(table), table[np.minimum(codes, len(table) - 1)], -1)
        if (ids < 0).any():
            self.encode(text)  # raises, naming the characters
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}


def tokenizer_from_meta(meta: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer described by meta.json's (or a checkpoint's) "tokenizer" entry."""
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "gpt2":
        from data.subword import GPT2Tokenizer
        return GPT2Tokenizer.from_meta(meta)
    if kind == "bpe":
        from data.subword import BPETokenizer
        return BPETokenizer.from_meta(meta)
    raise GPTError(f"unknown tokenizer kind {kind!r} in the dataset's meta.json; this version reads 'char', 'gpt2' and 'bpe'.")
