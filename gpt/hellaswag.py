"""HellaSwag, the downstream check of a pretraining run: which of four endings does the model find likeliest?

Each line of hellaswag_val.jsonl (10,042 items, https://github.com/rowanz/hellaswag) holds a
context `ctx`, four `endings` and the right one's index, `label`. Scored as llm.c's
dev/data/hellaswag.py scores it ("completion style"): each ending, with a leading space, is
appended to the context; the model's cross-entropy is taken on the ending's tokens only; the
prediction is the ending with the lowest total loss (`acc`) or the lowest mean loss per token
(`acc_norm`, length-normalised, the figure usually quoted). A row longer than the context window
keeps its last block_size tokens. The file is read from disk: nothing is downloaded.

Published figures to compare with (llm.c, completion style, all 10,042 items): OpenAI's GPT-2 124M
acc 0.2859, acc_norm 0.2955; GPT-2 1558M acc 0.3842, acc_norm 0.4893. Chance is 0.25.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from data.tokenizer import Tokenizer
from gpt.errors import GPTError

PAD_MULTIPLE = 32  # rows are padded to a multiple of this: few distinct shapes, so a compiled model recompiles little


@dataclasses.dataclass(frozen=True)
class Item:
    """One HellaSwag item, tokenized: four rows of context + ending, and which positions are the ending."""

    tokens: torch.Tensor  # (4, L) int64, right-padded with 0
    ending: torch.Tensor  # (4, L) bool: True at an ending's tokens (the ones scored)
    label: int


def read_examples(path: str | Path, limit: int = 0) -> list[dict]:
    """The items of a HellaSwag .jsonl file (the first `limit`, if > 0), each checked for ctx, endings and label."""
    path = Path(path)
    if not path.is_file():
        raise GPTError(f"no HellaSwag file at {path}. Get hellaswag_val.jsonl from https://github.com/rowanz/hellaswag "
                       "(data/hellaswag_val.jsonl) on a machine with internet and pass its path.")
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
                ok = isinstance(ex["ctx"], str) and len(ex["endings"]) == 4 and int(ex["label"]) in range(4)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise GPTError(f"{path}, line {number}, is not a HellaSwag item: each line must be a JSON object with "
                               "'ctx' (text), 'endings' (4 texts) and 'label' (0-3), as in hellaswag_val.jsonl.")
            examples.append(ex)
            if limit and len(examples) == limit:
                break
    if not examples:
        raise GPTError(f"{path} holds no HellaSwag items.")
    return examples


def tokenize(example: dict, encode: Callable[[str], list[int]], block_size: int) -> Item:
    """Context + " " + ending for each of the four endings, as one padded (4, L) batch; L <= block_size."""
    context = encode(example["ctx"])
    rows, endings = [], []
    for ending in example["endings"]:
        tail = encode(" " + ending)
        row, mask = (context + tail)[-block_size:], ([False] * len(context) + [True] * len(tail))[-block_size:]
        mask[0] = False  # nothing before the first position predicts it
        rows.append(row)
        endings.append(mask)
    width = min(block_size, -(-max(map(len, rows)) // PAD_MULTIPLE) * PAD_MULTIPLE)
    tokens = torch.zeros(4, width, dtype=torch.long)
    ending = torch.zeros(4, width, dtype=torch.bool)
    for i, (row, mask) in enumerate(zip(rows, endings)):
        tokens[i, :len(row)] = torch.tensor(row)
        ending[i, :len(mask)] = torch.tensor(mask)
    return Item(tokens, ending, int(example["label"]))


def ending_losses(logits: torch.Tensor, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, mean) cross-entropy of each row's ending tokens, from the model's logits (4, L, vocab)."""
    tokens, ending = item.tokens.to(logits.device), item.ending.to(logits.device)
    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    scored = ending[:, 1:].to(losses.dtype)
    total = (losses.view(4, -1) * scored).sum(dim=1)
    return total, total / scored.sum(dim=1)


class HellaSwag:
    """The tokenized items of one file, scored by any function from tokens (B, T) to logits (B, T, vocab)."""

    def __init__(self, items: list[Item]):
        self.items = items

    @classmethod
    def from_file(cls, path: str | Path, tokenizer: Tokenizer, block_size: int, limit: int = 0) -> "HellaSwag":
        return cls([tokenize(ex, tokenizer.encode, block_size) for ex in read_examples(path, limit)])

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def counts(self, logits_of: Callable[[torch.Tensor], torch.Tensor], rank: int = 0, world: int = 1,
               progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """[right by total loss, right by mean loss, items scored] over this rank's share: items rank, rank + world, ...

        Every rank makes the same number of forward passes (ZeRO-3 gathers weights collectively):
        a rank whose share is shorter scores item 0 again and does not count it.
        """
        n = len(self.items)
        out = torch.zeros(3, dtype=torch.float64)
        for j in range(-(-n // world)):
            k = rank + world * j
            item = self.items[k if k < n else 0]
            total, mean = ending_losses(logits_of(item.tokens), item)
            if k < n:
                out += torch.tensor([int(total.argmin()) == item.label, int(mean.argmin()) == item.label, 1.0],
                                    dtype=torch.float64)
                if progress is not None:
                    progress(int(out[2]))
        return out

    def score(self, logits_of: Callable[[torch.Tensor], torch.Tensor], rank: int = 0, world: int = 1,
              reduce_mean: Optional[Callable[[torch.Tensor], float]] = None,
              progress: Optional[Callable[[int], None]] = None) -> dict[str, float]:
        """acc and acc_norm over all items; with several ranks, each scores its share and `reduce_mean`
        (the mean of a number over ranks, a collective) combines them."""
        right, right_norm, seen = self.counts(logits_of, rank, world, progress).tolist()
        if world > 1:
            right, right_norm, seen = (reduce_mean(v) * world for v in (right, right_norm, seen))
        return {"hellaswag_acc": right / seen, "hellaswag_acc_norm": right_norm / seen}
