"""Tokenize a corpus in parallel worker processes, keeping the token stream in corpus order.

Work goes out as groups of pieces (about a megabyte of text each) and comes back
in the order it went out, so the shards are the same whatever `--workers` is.
At most `2 * workers` groups are in flight: memory stays bounded however fast
the corpus is read. Workers are spawned (not forked), so they never inherit
the parent's tokenizer threads or open maps.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from data.sources import Piece
from data.tokenizer import Tokenizer, tokenizer_from_meta

_TOKENIZER: Optional[Tokenizer] = None


def groups(pieces: Iterable[Piece], group_bytes: int) -> Iterator[list[Piece]]:
    """Consecutive pieces, grouped into lists of about `group_bytes` characters."""
    group, size = [], 0
    for piece in pieces:
        group.append(piece)
        size += len(piece.text)
        if size >= group_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def init_worker(tokenizer_meta: Optional[dict[str, Any]]) -> None:
    """Build this process's tokenizer once (None: the character pass, which needs none)."""
    global _TOKENIZER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    _TOKENIZER = tokenizer_from_meta(tokenizer_meta) if tokenizer_meta is not None else None


def encode_group(group: list[Piece]) -> np.ndarray:
    """The ids of a group of pieces, with the separator before each new document (uint32)."""
    parts = []
    for piece in group:
        if piece.new_doc:
            parts.append(np.array(_TOKENIZER.separator, dtype=np.uint32))
        parts.append(_TOKENIZER.encode_array(piece.text).astype(np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def chars_of_group(group: list[Piece]) -> set[str]:
    """The distinct characters of a group, "\\n" included when a document separator falls in it."""
    chars = set().union(*(set(piece.text) for piece in group))
    return chars | {"\n"} if any(piece.new_doc for piece in group) else chars


def ordered_map(fn: Callable[[list[Piece]], Any], work: Iterable[list[Piece]], workers: int,
                tokenizer_meta: Optional[dict[str, Any]]) -> Iterator[Any]:
    """fn over the work items, in order; in this process when workers == 1."""
    if workers == 1:
        init_worker(tokenizer_meta)
        yield from map(fn, work)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                             initargs=(tokenizer_meta,)) as pool:
        pending: collections.deque = collections.deque()
        for item in work:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
