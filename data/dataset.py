"""A prepared dataset on disk: `<data_dir>/<name>/meta.json` plus `{split}_NNNNNN.bin` shards."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from data.shards import read_header
from data.tokenizer import CharTokenizer, tokenizer_from_meta
from gpt.errors import GPTError

SPLITS = ("train", "val")


def prepare_command(name: str, data_dir: str | Path) -> str:
    extra = "" if str(data_dir) == "data" else f" --data_dir={data_dir}"
    src = "" if name == "shakespeare_char" else " --input=PATH_TO_TEXT"
    return f"python data/prepare.py --dataset={name}{src}{extra}"


@dataclasses.dataclass
class Dataset:
    """What the loader and the sampler need to know about a prepared dataset."""

    name: str
    root: Path
    meta: dict[str, Any]
    shards: dict[str, list[Path]]
    sizes: dict[str, list[int]]

    @property
    def tokenizer(self) -> CharTokenizer:
        return tokenizer_from_meta(self.meta["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])


def open_dataset(data_dir: str | Path, name: str) -> Dataset:
    """Find and validate a prepared dataset, or say how to prepare it."""
    root = Path(data_dir) / name
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
    shards, sizes = {}, {}
    for split in SPLITS:
        shards[split] = sorted(root.glob(f"{split}_*.bin"))
        if not shards[split]:
            raise GPTError(f"dataset {name!r} has no {split} shards ({root}/{split}_*.bin). "
                           f"Prepare it again with `{prepare_command(name, data_dir)}`.")
        sizes[split] = [read_header(p)[0] for p in shards[split]]
    return Dataset(name=name, root=root, meta=meta, shards=shards, sizes=sizes)
