"""A dataset on disk: ours (`meta.json` + `{split}_NNNNNN.bin` shards), llm.c's or nanoGPT's.

`open_dataset` finds `<data_dir>/<name>/`, recognises its format (or takes the
one given), validates every shard's header (1 KB each; nothing is mapped yet)
and says how to prepare the dataset when it is missing.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from data.formats import detect_format, open_llmc, open_nanogpt
from data.shakespeare import BUILT_IN
from data.shards import ShardFile, describe_shard
from data.tokenizer import Tokenizer, tokenizer_from_meta
from gpt.errors import GPTError

SPLITS = ("train", "val")


def prepare_command(name: str, data_dir: str | Path) -> str:
    extra = "" if str(data_dir) == "data" else f" --data_dir={data_dir}"
    if name in BUILT_IN:
        src = "" if BUILT_IN[name] == "char" else f" --tokenizer={BUILT_IN[name]}"
    else:
        src = " --input=PATH_TO_TEXT"
    return f"python data/prepare.py --dataset={name}{src}{extra}"


@dataclasses.dataclass
class Dataset:
    """What the loader and the sampler need to know about a prepared dataset."""

    name: str
    root: Path
    meta: dict[str, Any]
    files: dict[str, list[ShardFile]]
    format: str = "shards"

    @property
    def shards(self) -> dict[str, list[Path]]:
        return {split: [f.path for f in files] for split, files in self.files.items()}

    @property
    def sizes(self) -> dict[str, list[int]]:
        return {split: [f.tokens for f in files] for split, files in self.files.items()}

    @property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_meta(self.meta["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])


def open_dataset(data_dir: str | Path, name: str, data_format: str = "auto") -> Dataset:
    """Find and validate a dataset, or say how to prepare it."""
    root = Path(data_dir) / name
    found = detect_format(root) if root.is_dir() else None
    fmt = found if data_format == "auto" else data_format
    if fmt is None:
        raise GPTError(f"dataset {name!r} is not prepared: {root / 'meta.json'} does not exist (nor llm.c shards "
                       f"or nanoGPT's train.bin/val.bin in {root}). Prepare it with `{prepare_command(name, data_dir)}`.")
    if fmt == "llmc":
        meta, files = open_llmc(root, name)
    elif fmt == "nanogpt":
        meta, files = open_nanogpt(root, name)
    else:
        meta, files = _open_shards(root, name, data_dir)
    return Dataset(name=name, root=root, meta=meta, files=files, format=fmt)


def _open_shards(root: Path, name: str, data_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[ShardFile]]]:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise GPTError(f"dataset {name!r} is not prepared: {meta_path} does not exist. "
                       f"Prepare it with `{prepare_command(name, data_dir)}`.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["tokenizer"]["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GPTError(f"{meta_path} is unreadable or incomplete ({err!r}). "
                       f"Prepare the dataset again with `{prepare_command(name, data_dir)}`.") from None
    files = {}
    for split in SPLITS:
        paths = sorted(root.glob(f"{split}_*.bin"))
        if not paths:
            raise GPTError(f"dataset {name!r} has no {split} shards ({root}/{split}_*.bin). "
                           f"Prepare it again with `{prepare_command(name, data_dir)}`.")
        files[split] = [describe_shard(p) for p in paths]
    return meta, files
