"""Tokenizers, saved inside meta.json so a dataset and its checkpoints decode alike."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from gpt.errors import GPTError


class CharTokenizer:
    """One token per distinct character of the corpus, ids in sorted character order."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise GPTError("cannot build a character vocabulary from empty text.")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

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


def tokenizer_from_meta(meta: dict[str, Any]) -> CharTokenizer:
    """Rebuild the tokenizer described by meta.json's "tokenizer" entry."""
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    raise GPTError(f"unknown tokenizer kind {kind!r} in the dataset's meta.json; this version reads 'char'.")
