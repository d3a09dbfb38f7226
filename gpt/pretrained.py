"""--init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH: start a run, or an evaluation, from GPT-2's weights.

The weights come from a Hugging Face snapshot on disk, found by gpt/hf_snapshot.py (nothing is
downloaded): OpenAI's own, or a folder launch/export_checkpoint.py --format=hf wrote. As in
nanoGPT's `GPT.from_pretrained`, the snapshot decides the model's shape (layers, heads, width,
biases on); a run only chooses its dropout and may crop the context down (`block_size`: the
first position embeddings are kept). It may also ask for more vocabulary rows than the
snapshot has (`vocab_size: 50304`, a multiple of 64 for faster matmuls). Each padded row is the
mean of the real rows, so on any input a padded id's logit is the mean of the real ids' logits:
the real logits are unchanged, and no token has a padded id. The loss moves only through the
softmax's normaliser, which gains P terms each equal to the geometric mean of the real
probabilities (at most 1/V, by AM-GM): it rises by log(1 + P * exp(mean_k log p_k)) <= log(1 + P/V),
9.4e-4 nats for 47 rows over GPT-2's 50257 in the worst case, a uniform model; a trained model,
whose geometric-mean probability is far below 1/V, moves far less. (Zero rows would give every
padded id logit 0 on every input, which has no bound relative to a model's real logits: the loss
would move by an amount that depends on the model.)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch

from data.subword import EOT_TEXT, gpt2_meta
from gpt.config import INIT_FROM, ModelConfig
from gpt.errors import GPTError
from gpt.hf_snapshot import GPT2_MODELS, find_model, weights_file
from gpt.hf_weights import from_hf, require_gpt2_architecture, shape_from_hf_config
from gpt.model import GPT


def is_pretrained(init_from: str) -> bool:
    """Whether --init_from names weights to start from (a GPT-2 name or a folder) rather than scratch/resume/auto."""
    return init_from not in INIT_FROM


@dataclasses.dataclass
class Snapshot:
    """A GPT-2 snapshot's shape, where it is, and the tokenizer its ids belong to."""

    source: str
    folder: Path
    shape: dict[str, int]  # n_layer, n_head, n_embd, n_positions, vocab_size
    tokenizer: dict[str, Any]  # a tokenizer entry as in meta.json
    notes: list[str]

    @property
    def name(self) -> str:
        return f"OpenAI's {self.source}" if self.source in GPT2_MODELS else f"the snapshot {self.folder.name}"


def open_snapshot(source: str) -> Snapshot:
    """Find `source` and read its config.json (cheap: no weights are read)."""
    folder = find_model(source)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GPTError(f"{folder / 'config.json'} is unreadable ({err}); fetch the snapshot again.") from None
    shape, notes = shape_from_hf_config(hf, str(folder))
    return Snapshot(source, folder, shape, _tokenizer_of(folder, shape["vocab_size"]), notes)


def _tokenizer_of(folder: Path, rows: int) -> dict[str, Any]:
    """The tokenizer entry of a snapshot: meta.json's (written by our exporter: char and bpe kinds too), else
    GPT-2's byte-level BPE, sized by its vocab.json when there is one (the embedding may have padding rows)."""
    meta = folder / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8"))["tokenizer"]
    vocab = folder / "vocab.json"
    if vocab.is_file():
        ids = json.loads(vocab.read_text(encoding="utf-8"))
        return {"kind": "gpt2", "vocab_size": max(ids.values()) + 1, "eot": ids[EOT_TEXT]}
    return gpt2_meta() if rows >= gpt2_meta()["vocab_size"] else {"kind": "gpt2", "vocab_size": rows, "eot": rows - 1}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a snapshot: model.safetensors, its sharded form (an index + shards), or pytorch_model.bin."""
    path = weights_file(folder)
    if path.name == "pytorch_model.bin":
        return torch.load(path, map_location="cpu", weights_only=True)  # weights only: no pickled code runs
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise GPTError(f"{path} is a safetensors file: `pip install -r requirements.txt` installs safetensors.") from None
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    return load_file(path)


def fit_vocab_and_context(state: dict[str, torch.Tensor], block_size: int, vocab_size: int,
                          real_vocab: int) -> dict[str, torch.Tensor]:
    """Crop the position embeddings to `block_size`; crop or pad the token embedding (and the tied head) to
    `vocab_size` rows, padding with the mean of the first `real_vocab` rows (see the module docstring)."""
    state = dict(state)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size].contiguous()
    wte = state["transformer.wte.weight"]
    if vocab_size <= wte.shape[0]:
        wte = wte[:vocab_size].contiguous()
    else:
        mean = wte[:real_vocab].mean(dim=0, keepdim=True)
        wte = torch.cat([wte, mean.expand(vocab_size - wte.shape[0], -1)])
    state["transformer.wte.weight"] = state["lm_head.weight"] = wte
    return state


def check_tokenizer(snapshot: Snapshot, dataset_tokenizer: dict[str, Any], dataset: str) -> None:
    """The dataset's ids must be the snapshot's: GPT-2's for OpenAI's weights, the exported one's otherwise."""
    want = snapshot.tokenizer
    if want.get("kind") == "gpt2":
        ok = dataset_tokenizer.get("kind") == "gpt2" and int(dataset_tokenizer["vocab_size"]) <= snapshot.shape["vocab_size"]
        fix = f"prepare it with GPT-2's tokenizer: python data/prepare.py --dataset={dataset} --tokenizer=gpt2 ..."
    else:
        ok = dataset_tokenizer == want
        fix = "train on the dataset the exported model was trained on"
    if not ok:
        raise GPTError(f"--init_from={snapshot.source}: the weights of {snapshot.name} read {want.get('kind')} tokens "
                       f"({want.get('vocab_size')} ids), but dataset {dataset!r} is tokenized with "
                       f"{dataset_tokenizer.get('kind')} ({dataset_tokenizer.get('vocab_size')} ids); {fix}.")


def adopt_shape(model: ModelConfig, snapshot: Snapshot) -> list[str]:
    """Give the run's ModelConfig the snapshot's shape; returns what the config said otherwise, for the user."""
    require_gpt2_architecture(model, f"start from {snapshot.name}'s weights (--init_from={snapshot.source})")
    s = snapshot.shape
    if model.block_size > s["n_positions"]:
        raise GPTError(f"--block_size={model.block_size} is longer than the {s['n_positions']} learned positions of "
                       f"{snapshot.name}: the context can only be cropped. Use --block_size={s['n_positions']} or less.")
    replaced = [f"{k} {getattr(model, k)} -> {s[k]}" for k in ("n_layer", "n_head", "n_embd") if getattr(model, k) != s[k]]
    if not model.bias:
        replaced.append("bias False -> True")
    model.n_layer, model.n_head, model.n_embd, model.bias = s["n_layer"], s["n_head"], s["n_embd"], True
    if model.vocab_size is None:
        model.vocab_size = s["vocab_size"]
    return replaced


def init_pretrained(model: ModelConfig, snapshot: Snapshot, dataset_tokenizer: dict[str, Any], dataset: str,
                    load: bool = True) -> tuple[Optional[dict[str, torch.Tensor]], list[str]]:
    """For build_run: set `model`'s shape from the snapshot, check the dataset's tokenizer, and (if `load`) return
    the weights under our names, fitted to the run's block_size and vocab_size; plus lines to print."""
    check_tokenizer(snapshot, dataset_tokenizer, dataset)
    replaced = adopt_shape(model, snapshot)
    if model.vocab_size < int(dataset_tokenizer["vocab_size"]):
        raise GPTError(f"--vocab_size={model.vocab_size} is smaller than dataset {dataset!r}'s vocabulary of "
                       f"{dataset_tokenizer['vocab_size']}: leave it unset or make it larger.")
    s = snapshot.shape
    lines = [f"init_from={snapshot.source}: the weights of {snapshot.name}, from {snapshot.folder}: {s['n_layer']} layers x "
             f"{s['n_head']} heads x {s['n_embd']} wide, context {model.block_size} of {s['n_positions']}, "
             f"vocabulary {model.vocab_size}" + (f" ({model.vocab_size - s['vocab_size']} padding rows, mean-initialised)"
                                                 if model.vocab_size > s["vocab_size"] else "")]
    if replaced:
        lines.append(f"the snapshot sets the model's shape, so the config's values give way: {', '.join(replaced)}")
    lines += snapshot.notes
    if not load:
        return None, lines
    state = from_hf(read_weights(snapshot.folder), s["n_layer"], str(snapshot.folder))
    real = min(s["vocab_size"], int(snapshot.tokenizer["vocab_size"]))
    return fit_vocab_and_context(state, model.block_size, model.vocab_size, real), lines


def pretrained_model(source: str) -> tuple[GPT, dict[str, Any], list[str]]:
    """A snapshot as our GPT, whole (its full context and vocabulary), with its tokenizer entry: for evaluation."""
    snapshot = open_snapshot(source)
    s = snapshot.shape
    model = GPT(ModelConfig(block_size=s["n_positions"], vocab_size=s["vocab_size"], n_layer=s["n_layer"],
                            n_head=s["n_head"], n_embd=s["n_embd"], bias=True))
    model.load_state_dict(from_hf(read_weights(snapshot.folder), s["n_layer"], str(snapshot.folder)))
    return model, snapshot.tokenizer, snapshot.notes
