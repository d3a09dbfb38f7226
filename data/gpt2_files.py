"""GPT-2's byte-level BPE read from vocab.json + merges.txt (a Hugging Face snapshot), and written back.

tiktoken builds GPT-2's encoding from two files it downloads once and caches; every
Hugging Face snapshot of GPT-2 carries the same vocabulary and merges as vocab.json and
merges.txt. `SnapshotEncoding` runs those through the `tokenizers` library behind the
part of tiktoken's Encoding that data/subword.py uses, so a machine with either source
tokenizes alike (tests/data/test_gpt2_files.py checks it against tiktoken on one BPE
given both ways). `vocab_and_merges` goes the other way, from any encoding's token bytes
to the two files, for exporting a GPT-2-tokenized model to Hugging Face.

Both files spell a token's bytes through GPT-2's byte-to-character table (`byte_to_unicode`):
a merges.txt line "Ġt he" is the merge of the bytes " t" and "he".
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterable

from data.subword import EOT_TEXT


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to printable characters.

    Bytes that print as themselves in Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') keep their character;
    the other 68 (controls, space, NBSP, soft hyphen) take chr(256), chr(257), ... in byte order, so
    space is 'Ġ' and newline 'Ċ'. GPT-2 numbers the single bytes in that order too: the kept ones
    first ('!' is id 0), then the shifted ones (space is id 220).
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    shifted = (b for b in range(256) if b not in table)
    for n, b in enumerate(shifted):
        table[b] = chr(256 + n)
    return dict(sorted(table.items()))


def spell(token: bytes) -> str:
    """A token's bytes as vocab.json and merges.txt write them."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def unspell(text: str) -> bytes:
    inverse = {c: b for b, c in byte_to_unicode().items()}
    return bytes(inverse[c] for c in text)


def read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt's pairs in rank order (its first line may be a '#version' header)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


class SnapshotEncoding:
    """GPT-2's encoding from a folder with vocab.json and merges.txt, with tiktoken's method names.

    `<|endoftext|>` is an ordinary vocabulary entry here, not a special token, so text that
    contains those characters is encoded as text, as tiktoken's `encode_ordinary` does.
    """

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.folder = Path(folder)
        vocab = json.loads((self.folder / "vocab.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=read_merges(self.folder / "merges.txt")))
        # GPT-2's split pattern (contractions, letters, numbers, other, spaces) is ByteLevel's regex
        self.tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self.tokenizer.decoder = decoders.ByteLevel()
        self.id_to_text = {i: t for t, i in vocab.items()}
        self.eot_token = int(vocab[EOT_TEXT])
        self.n_vocab = max(vocab.values()) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return unspell(self.id_to_text[int(token)])  # '<|endoftext|>' is printable ASCII: spelled as itself


def vocab_and_merges(token_bytes: Callable[[int], bytes], n_vocab: int, eot: int) -> tuple[dict[str, int], list[str]]:
    """vocab.json's mapping and merges.txt's lines for the byte-level BPE whose id i is `token_bytes(i)`.

    Ids are merge ranks: each multi-byte token is the merge of the two parts that byte-pair
    merging with the lower ranks leaves of it (lowest rank first, as tiktoken merges).
    """
    ranks = {token_bytes(i): i for i in range(n_vocab) if i != eot}
    vocab = {spell(tok): i for tok, i in ranks.items()}
    vocab[EOT_TEXT] = eot
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(tok) > 1:
            left, right = _last_merge(tok, ranks, rank)
            merges.append(f"{spell(left)} {spell(right)}")
    return vocab, merges


def _last_merge(token: bytes, ranks: dict[bytes, int], limit: int) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(parts[i] + parts[i + 1], limit), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= limit:
            raise ValueError(f"token {token!r} (rank {limit}) cannot be made from lower-ranked merges: not a BPE vocabulary")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]
