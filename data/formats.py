"""Datasets users already have: llm.c / modded-nanogpt shards and nanoGPT's train.bin/val.bin.

- llm.c, modded-nanogpt: `*train*.bin` and `*val*.bin` shards with a 256 x int32
  header (magic 20240520, version 1) and uint16 GPT-2 tokens; no metadata file.
- nanoGPT: headerless uint16 `train.bin` and `val.bin`, and for character
  datasets a `meta.pkl` with `vocab_size`, `stoi`, `itos`; without it, GPT-2.

meta.pkl is a pickle, and unpickling can run code: it is read with an
unpickler that refuses every class, which plain dicts, strings and ints never need.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from data.shards import HEADER_BYTES, LLMC_MAGIC, ShardFile, describe_shard
from data.subword import gpt2_meta
from gpt.errors import GPTError

FORMATS = ("auto", "shards", "llmc", "nanogpt")


def detect_format(root: Path) -> str | None:
    """Which format the folder holds, or None when it holds no dataset."""
    if (root / "meta.json").is_file() or any(root.glob("train_[0-9]*.bin")):
        return "shards"  # our shard names without meta.json: say that meta.json is missing
    if (root / "train.bin").is_file() and (root / "val.bin").is_file():
        return "llmc" if _has_llmc_header(root / "train.bin") else "nanogpt"
    if any(root.glob("*train*.bin")):
        return "llmc"
    return None


def _has_llmc_header(path: Path) -> bool:
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(8).ljust(8, b"\0"), dtype="<i4")
    return int(head[0]) == LLMC_MAGIC and path.stat().st_size >= HEADER_BYTES


def open_llmc(root: Path, name: str) -> tuple[dict[str, Any], dict[str, list[ShardFile]]]:
    """meta and shards of an llm.c-style folder (GPT-2 tokens)."""
    files = {}
    for split in ("train", "val"):
        paths = sorted(p for p in root.glob(f"*{split}*.bin") if p.is_file())
        if not paths:
            raise GPTError(f"{root} holds llm.c shards but none for the {split} split (expected files named "
                           f"like {name}_{split}_000000.bin).")
        files[split] = [describe_shard(p) for p in paths]
    return {"dataset": name, "format": "llmc", "tokenizer": gpt2_meta()}, files


def open_nanogpt(root: Path, name: str) -> tuple[dict[str, Any], dict[str, list[ShardFile]]]:
    """meta and shards of a nanoGPT folder: headerless uint16 train.bin/val.bin (+ meta.pkl)."""
    files = {}
    for split in ("train", "val"):
        path = root / f"{split}.bin"
        if not path.is_file():
            raise GPTError(f"{path} does not exist: a nanoGPT dataset needs train.bin and val.bin.")
        size = path.stat().st_size
        if size % 2:
            raise GPTError(f"{path} has {size} bytes, an odd number: a nanoGPT .bin holds uint16 tokens "
                           "(2 bytes each), so the file is truncated or not a nanoGPT token file.")
        files[split] = [ShardFile(path, size // 2, np.dtype("<u2"), 0)]
    pkl = root / "meta.pkl"
    tokenizer = _char_meta_from_pickle(pkl) if pkl.is_file() else gpt2_meta()
    return {"dataset": name, "format": "nanogpt", "tokenizer": tokenizer}, files


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and only plain dicts, lists, strings "
                                     "and numbers are read")


def _char_meta_from_pickle(path: Path) -> dict[str, Any]:
    try:
        meta = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
        itos, vocab_size = meta["itos"], int(meta["vocab_size"])
        chars = [itos[i] for i in range(vocab_size)]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as err:
        raise GPTError(f"{path} is not a nanoGPT character meta.pkl (a dict with vocab_size, stoi, itos): {err}. "
                       "Remove it if the dataset uses GPT-2 tokens.") from None
    if not all(isinstance(c, str) for c in chars) or len(set(chars)) != len(chars):
        raise GPTError(f"{path}: itos must map 0 ... vocab_size-1 to distinct strings.")
    return {"kind": "char", "vocab_size": vocab_size, "chars": chars}
