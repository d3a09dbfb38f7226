"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is one `torch.save` file (`<out_dir>/ckpt-NNNNNNN.pt`, also named
`ckpt.pt` when it is the latest and `best.pt` when it has the best val loss) holding the model,
optimizer and GradScaler states, the iteration, the best validation loss, every
RNG stream, the loader position, the resolved config and the tokenizer. It is
written to a temporary name, fsynced and renamed over the old one, so a crash
mid-write leaves the previous checkpoint intact. It loads with
`weights_only=True`: no pickled code runs.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gpt.config import ModelConfig
from gpt.errors import GPTError
from gpt.model import GPT

FORMAT = "gpt-checkpoint"
VERSION = 1
FILENAME = "ckpt.pt"
BEST_FILENAME = "best.pt"
HISTORY_PREFIX = "ckpt-"
REQUIRED = ("model", "model_config", "iter_num", "config", "tokenizer")


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / FILENAME


def save_checkpoint(state: dict[str, Any], out_dir: str | Path, keep_last: int = 1, best: bool = False) -> Path:
    """Write `state` as <out_dir>/ckpt-NNNNNNN.pt and point ckpt.pt (and best.pt if `best`) at it.

    Each file is written to a temporary name, fsynced and renamed; ckpt.pt and best.pt
    are hard links swapped in by rename, so at every instant they name a complete
    checkpoint. Only the `keep_last` newest ckpt-*.pt names are kept (best.pt keeps its
    data alive on its own). Returns the path of ckpt.pt.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".ckpt*.tmp-*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    final = out / f"{HISTORY_PREFIX}{int(state.get('iter_num', 0)):07d}.pt"
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _point(out / FILENAME, final)
        if best:
            _point(out / BEST_FILENAME, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise GPTError(f"could not write checkpoint {final}: {err.strerror or err}. "
                       "The previous checkpoint is untouched; free space or fix permissions and resume.") from None
    _fsync_dir(out)
    for old in sorted(out.glob(f"{HISTORY_PREFIX}*.pt"))[:-keep_last]:
        old.unlink(missing_ok=True)
    return out / FILENAME


def _point(name: Path, target: Path) -> None:
    """Make `name` another name for `target`, replacing any old one atomically."""
    tmp = name.with_name(f".{name.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:  # a filesystem without hard links: copy (still renamed into place)
        shutil.copyfile(target, tmp)
    os.replace(tmp, name)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint (a ckpt.pt file, or an out_dir of a plain or DeepSpeed run).

    Bad ones are explained: missing, truncated, not a checkpoint, incomplete.
    """
    path = Path(path)
    if path.is_dir():
        from gpt.strategy.deepspeed_export import is_deepspeed_checkpoint, plain_from_deepspeed
        if is_deepspeed_checkpoint(path):  # a DeepSpeed run's out_dir: reassemble its latest checkpoint
            return plain_from_deepspeed(path)
        path = checkpoint_path(path)
    if not path.is_file():
        raise GPTError(f"no checkpoint at {path}. Train first (python launch/train.py --out_dir={path.parent}) "
                       "or point --out_dir at a folder that holds ckpt.pt.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types here (zip, pickle, EOF, Runtime): all mean "unreadable"
        raise GPTError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                       "It may be truncated by an interrupted copy or not be a checkpoint at all.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GPTError(f"{path} is a torch file but not a checkpoint written by launch/train.py (no '{FORMAT}' marker).")
    if ckpt.get("version") != VERSION:
        raise GPTError(f"{path} has checkpoint format version {ckpt.get('version')}; this code reads version {VERSION}.")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise GPTError(f"{path} is incomplete: it lacks {', '.join(missing)}.")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], **overrides: Any) -> GPT:
    """Build the checkpoint's GPT and load its weights (overrides: e.g. dropout=0.0, attention="math")."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    config = ModelConfig(**{k: v for k, v in ckpt["model_config"].items() if k in fields})
    config = dataclasses.replace(config, **overrides)
    model = GPT(config)
    load_model_state(model, ckpt["model"], "the checkpoint")
    return model


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that names mismatched shapes and keys."""
    own = model.state_dict()
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if problems or missing or unexpected:
        parts = []
        if problems:
            parts.append("shapes differ for " + "; ".join(problems[:5]))
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        raise GPTError(f"{source} does not fit this model: {', '.join(parts)}. "
                       "It was trained with another model shape or vocabulary; use the same config, or a fresh --out_dir.")
    model.load_state_dict(state)
