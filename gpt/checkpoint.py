"""Checkpoints: the one place that knows their format, how they are written and read, and which are kept.

A run's checkpoints live in its out_dir as entries named `ckpt-NNNNNNN` (the iteration),
in one of three storage forms:
- a torch file, `ckpt-NNNNNNN.pt` (single process and DDP): model, optimizer, GradScaler
  and the trainer's state in one `torch.save`, loaded with `weights_only=True` (no pickled
  code runs). The pointers are hard links: `ckpt.pt` (the latest) and `best.pt`.
- a DeepSpeed folder, `ckpt-NNNNNNN/`: the engine's own sharded files, one set per rank,
  with the trainer's state as its client state (and, once a resume on another world size
  needed it, the universal form of the same checkpoint in `ckpt-NNNNNNN/universal/`).
- a DCP folder, `ckpt-NNNNNNN/` (FSDP): torch.distributed.checkpoint's `.metadata` and one
  `__R_0.distcp` file per rank, holding the model and optimizer as sharded tensors that any
  world size can read back, plus `trainer_state.pt` (the trainer's state, a torch file).
  Every rank writes into `.ckpt-NNNNNNN.tmp/`, which rank 0 renames once all are done.
The folder forms' pointers are text files naming the folder: `latest` (DeepSpeed's own,
which the engine also writes and reads; written here for DCP) and `best`.
Every form: an entry is complete before a pointer moves to it (temporary name, fsync,
rename; the engine's files are all written before `latest` names them), so a crash
mid-write leaves the previous checkpoint intact. One retention policy serves all three:
the `keep_last` newest entries are kept, and the best one, whatever its age.

`load_checkpoint` reads any form as one plain dict (a folder is reassembled into whole
fp32 weights, without a process group), which is what the sampler and the exporter read.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from gpt.config import KernelConfig, ModelConfig, model_config_from_dict
from gpt.distributed import barrier
from gpt.errors import GPTError
from gpt.model import GPT

FORMAT = "gpt-checkpoint"
VERSION = 1
PREFIX = "ckpt-"
REQUIRED = ("model", "model_config", "iter_num", "config", "tokenizer")
# pointer names: the torch-file form links them, the folder form writes the entry's name in them
FILE_POINTERS = {"latest": "ckpt.pt", "best": "best.pt"}
FOLDER_POINTERS = {"latest": "latest", "best": "best"}
# Test-only fault injection: with GPT_TEST_KILL_IN_SAVE=N in the environment, a process writing the torch file
# of iteration N's checkpoint (the whole checkpoint, or a DCP entry's trainer state) kills itself (SIGKILL) once
# the temporary file is written and before it is renamed, as kill -9 or a power cut mid-write would:
# tests/reliability checks that the previous checkpoint survives.
KILL_IN_SAVE = "GPT_TEST_KILL_IN_SAVE"
# what a plain checkpoint read from a folder carries besides the weights
PLAIN_KEYS = ("model_config", "config", "tokenizer", "dataset", "iter_num", "best_val_loss")
DCP_TRAINER_STATE = "trainer_state.pt"  # ours, beside DCP's own files in a DCP entry


def entry_name(iter_num: int) -> str:
    return f"{PREFIX}{int(iter_num):07d}"


def checkpoint_path(out_dir: str | Path) -> Path:
    """The latest checkpoint of the torch-file form: <out_dir>/ckpt.pt."""
    return Path(out_dir) / FILE_POINTERS["latest"]


def is_folder_checkpoint(out_dir: str | Path) -> bool:
    """Whether out_dir holds checkpoints in the folder form (a DeepSpeed run)."""
    return (Path(out_dir) / FOLDER_POINTERS["latest"]).is_file()


def has_checkpoint(out_dir: str | Path) -> bool:
    return checkpoint_path(out_dir).is_file() or is_folder_checkpoint(out_dir)


def latest_entry(out_dir: str | Path) -> Path:
    """The folder entry `latest` names."""
    return Path(out_dir) / (Path(out_dir) / FOLDER_POINTERS["latest"]).read_text().strip()


def checkpoint_form(out_dir: str | Path) -> Optional[str]:
    """Which form out_dir's latest checkpoint has: "file", "dcp", "deepspeed", or None when there is none."""
    if is_folder_checkpoint(out_dir):
        return "dcp" if (latest_entry(out_dir) / DCP_TRAINER_STATE).is_file() else "deepspeed"
    return "file" if checkpoint_path(out_dir).is_file() else None


# which strategies write each form, for the errors that say how to resume
FORM_STRATEGIES = {"file": "single or ddp", "dcp": "fsdp", "deepspeed": "deepspeed"}


def require_form(out_dir: str | Path, form: str, strategy: str) -> None:
    """Explain, before anything is loaded, that out_dir holds another strategy's checkpoint form."""
    found = checkpoint_form(out_dir)
    if found is not None and found != form:
        raise GPTError(f"{out_dir} holds a checkpoint written by --strategy={FORM_STRATEGIES[found]}, which "
                       f"--strategy={strategy} cannot resume. Resume it with --strategy={FORM_STRATEGIES[found]}, "
                       "or export its weights (launch/export_checkpoint.py) and start a new run in another --out_dir.")


# -- writing ------------------------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], out_dir: str | Path, keep_last: int = 1, best: bool = False) -> Path:
    """Write `state` as <out_dir>/ckpt-NNNNNNN.pt, point ckpt.pt (and best.pt if `best`) at it, apply retention.

    Returns the path of ckpt.pt. A failed write is one GPTError; the previous checkpoint stays.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    final = out / f"{entry_name(state.get('iter_num', 0))}.pt"
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    try:
        _write_torch_file({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, final)
        _link(out / FILE_POINTERS["latest"], final)
        if best:
            _link(out / FILE_POINTERS["best"], final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise GPTError(f"could not write checkpoint {final}: {err.strerror or err}. "
                       "The previous checkpoint is untouched; free space or fix permissions and resume.") from None
    _fsync_dir(out)
    _retain(out, keep_last)
    return out / FILE_POINTERS["latest"]


def save_sharded_checkpoint(state: dict[str, Any], trainer_state: dict[str, Any], out_dir: str | Path,
                            keep_last: int, best: bool, is_main: bool) -> Path:
    """Write a DCP entry (collective: every rank calls it with its shards of `state`), then point `latest` at it.

    Every rank writes its part of `state` (state dicts of DTensors) into <out_dir>/.ckpt-NNNNNNN.tmp/ and rank 0
    adds the trainer state; only when all are written does rank 0 rename the folder to ckpt-NNNNNNN and move
    the pointers. A crash before that leaves a hidden temporary folder that the next save removes.
    """
    import torch.distributed.checkpoint as dcp

    out = Path(out_dir)
    entry = entry_name(trainer_state["iter_num"])
    tmp = out / f".{entry}.tmp"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
    barrier()
    try:
        dcp.save(state, checkpoint_id=tmp)  # fsyncs each file; the coordinator writes .metadata last
        if is_main:
            _write_torch_file({"format": FORMAT, "version": VERSION, **trainer_state}, tmp / DCP_TRAINER_STATE)
    except OSError as err:
        raise GPTError(f"could not write checkpoint {out / entry}: {err.strerror or err}. "
                       "The previous checkpoint is untouched; free space or fix permissions and resume.") from None
    barrier()
    if is_main:
        final = out / entry
        if final.exists():  # the same iteration saved again by a fresh run in this out_dir
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out)
        commit_folder_checkpoint(out, entry, keep_last, best, latest=True)
    barrier()
    return out / entry


def load_sharded_checkpoint(state: dict[str, Any], out_dir: str | Path) -> None:
    """Fill `state` (state dicts of DTensors, laid out for this world size) from the latest DCP entry (collective).

    DCP reads each rank's slices from whichever files hold them, so the entry may come from any world size.
    """
    import torch.distributed.checkpoint as dcp

    entry = latest_entry(out_dir)
    if not (entry / ".metadata").is_file():
        raise GPTError(f"{out_dir}/latest names {entry.name}, but {entry}/.metadata is missing: the checkpoint is "
                       "incomplete. Point `latest` at an older ckpt-NNNNNNN folder, or start fresh.")
    dcp.load(state, checkpoint_id=entry)


def commit_folder_checkpoint(out_dir: str | Path, entry: str, keep_last: int, best: bool, latest: bool = False) -> Path:
    """After every rank wrote folder `entry`: point `latest` at it (DeepSpeed's engine has done that itself),
    mark it best if it is, apply retention."""
    out = Path(out_dir)
    if latest:
        _write_pointer(out / FOLDER_POINTERS["latest"], entry)
    if best:
        _write_pointer(out / FOLDER_POINTERS["best"], entry)
    _retain(out, keep_last)
    return out / entry


def _retain(out: Path, keep_last: int) -> None:
    """Keep the `keep_last` newest entries and the best one; remove the other entries."""
    files = sorted(out.glob(f"{PREFIX}*.pt"))
    folders = sorted(p for p in out.glob(f"{PREFIX}*") if p.is_dir())
    best = _best_entry(out, files, folders)
    for entries in (files, folders):
        for old in entries[:-keep_last]:
            if old == best:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def _best_entry(out: Path, files: list[Path], folders: list[Path]) -> Optional[Path]:
    """The entry a best pointer names, in either form."""
    link = out / FILE_POINTERS["best"]
    if link.is_file():
        same = [f for f in files if os.path.samefile(f, link)]
        if same:
            return same[0]
    pointer = out / FOLDER_POINTERS["best"]
    if pointer.is_file():
        return out / pointer.read_text().strip()
    return None


def _remove_stale(out: Path) -> None:
    """Temporary files and folders left by a run killed mid-write."""
    for stale in out.glob(".ckpt*.tmp*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _write_torch_file(obj: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        if os.environ.get(KILL_IN_SAVE) == str(obj.get("iter_num")):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync(f.fileno())


def _link(name: Path, target: Path) -> None:
    """Make `name` another name for `target`, replacing any old one atomically."""
    tmp = name.with_name(f".{name.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:  # a filesystem without hard links: copy (still renamed into place)
        shutil.copyfile(target, tmp)
    os.replace(tmp, name)


def _write_pointer(path: Path, entry: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(entry)
    os.replace(tmp, path)


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


# -- reading ------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint: a .pt file, or an out_dir of either form (its latest checkpoint).

    Bad ones are explained: missing, truncated, not a checkpoint, incomplete.
    """
    path = Path(path)
    if path.is_dir():
        if is_folder_checkpoint(path):
            return _plain_from_dcp(path) if checkpoint_form(path) == "dcp" else _plain_from_deepspeed(path)
        path = checkpoint_path(path)
    if not path.is_file():
        if is_folder_checkpoint(path.parent):
            require_form(path.parent, "file", "single or ddp")
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


def folder_client_state(out_dir: str | Path) -> dict[str, Any]:
    """The trainer state saved with the latest folder checkpoint: a DCP entry's trainer_state.pt, or a DeepSpeed
    entry's client state (rank 0's model-states file)."""
    if checkpoint_form(out_dir) == "dcp":
        return _dcp_trainer_state(latest_entry(out_dir))
    return _latest_folder_states(Path(out_dir))[1]


def _dcp_trainer_state(entry: Path) -> dict[str, Any]:
    path = entry / DCP_TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # as in load_checkpoint: every failure here means "unreadable"
        raise GPTError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                       "It may be truncated by an interrupted copy.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model_config" not in state:
        raise GPTError(f"{path} is not the trainer state of a checkpoint written by launch/train.py.")
    return state


def _plain_from_dcp(out_dir: Path) -> dict[str, Any]:
    """The latest DCP checkpoint as a plain checkpoint dict, read in this one process.

    The template comes from DCP's own metadata (every "model." tensor at its whole size), so the
    optimizer's shards are never read; DCP assembles each tensor from every rank's file.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entry = latest_entry(out_dir)
    state = _dcp_trainer_state(entry)
    try:
        metadata = dcp.FileSystemReader(str(entry)).read_metadata()
    except Exception as err:
        raise GPTError(f"{entry} is an incomplete DCP checkpoint: its .metadata cannot be read "
                       f"({type(err).__name__}: {err}).") from None
    model = {key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
             for key, meta in metadata.state_dict_metadata.items()
             if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it loads in one process, which is what no_dist asks for
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model}, checkpoint_id=entry, no_dist=True)
    return {"format": FORMAT, "version": VERSION, "model": _with_tied_names({k: v.float() for k, v in model.items()}),
            **{k: state[k] for k in PLAIN_KEYS if k in state}}


def _latest_folder_states(out_dir: Path) -> tuple[str, dict[str, Any]]:
    tag = latest_entry(out_dir).name
    # ZeRO-3 names the rank-0 file after its partition; the other stages keep one whole-model file
    candidates = [out_dir / tag / "mp_rank_00_model_states.pt", out_dir / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    states_path = next((p for p in candidates if p.is_file()), None)
    if states_path is None:
        raise GPTError(f"{out_dir}/latest names checkpoint {tag!r}, but {candidates[0].name} is missing from "
                       f"{out_dir / tag}: the DeepSpeed checkpoint is incomplete.")
    try:
        # DeepSpeed pickles its own objects into this file: it is our run's output, not foreign input
        states = torch.load(states_path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise GPTError(f"{states_path} is not a readable DeepSpeed checkpoint ({type(err).__name__}: {err}).") from None
    if "model_config" not in states:
        raise GPTError(f"{out_dir} holds a DeepSpeed checkpoint that was not written by launch/train.py.")
    return tag, states


def _plain_from_deepspeed(out_dir: Path) -> dict[str, Any]:
    """The latest DeepSpeed checkpoint as a plain (fp32, unsharded) checkpoint dict.

    Stage 0 keeps whole weights in the model-states file; stages 1-3 keep fp32 master weights
    sharded in the optimizer files, which DeepSpeed's zero_to_fp32 reassembles.
    """
    tag, states = _latest_folder_states(out_dir)
    if states.get("zero_stage", 0) == 0:
        model = {k: v.float() for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        model = _with_tied_names(dict(get_fp32_state_dict_from_zero_checkpoint(str(out_dir), tag=tag)))
    return {"format": FORMAT, "version": VERSION, "model": model, **{k: states[k] for k in PLAIN_KEYS if k in states}}


def _with_tied_names(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharded formats may keep one name per tied parameter; give the tied pair both names the model expects."""
    for a, b in (("lm_head.weight", "transformer.wte.weight"), ("transformer.wte.weight", "lm_head.weight")):
        if a in model and b not in model:
            model[b] = model[a]
    return model


# -- checkpoints and models ------------------------------------------------------------------------------------
def check_resumable(saved: dict[str, Any], model: ModelConfig, tokenizer: dict[str, Any], out_dir: str | Path,
                    dataset: str) -> None:
    """Explain why this run cannot continue a checkpoint: another model, or another vocabulary."""
    theirs = model_config_from_dict(saved["model_config"])
    diff = [f"{f.name}: checkpoint {getattr(theirs, f.name)!r}, this run {getattr(model, f.name)!r}"
            for f in dataclasses.fields(ModelConfig) if getattr(theirs, f.name) != getattr(model, f.name)]
    if diff:
        raise GPTError(f"cannot resume from {out_dir}: the model differs ({'; '.join(diff)}). "
                       "Resume with the config the run started with (the run's resolved copy is "
                       f"{Path(out_dir) / 'config.yaml'}), or start fresh in another --out_dir.")
    if saved["tokenizer"] != tokenizer:
        raise GPTError(f"cannot resume from {out_dir}: it was trained on another vocabulary than dataset "
                       f"{dataset!r} has now. Use the dataset it was trained on.")


def model_from_checkpoint(ckpt: dict[str, Any], dropout: float = 0.0, kernels: Optional[KernelConfig] = None) -> GPT:
    """Build the checkpoint's GPT and load its weights; kernels are this process's choice, not the checkpoint's."""
    model = GPT(model_config_from_dict(ckpt["model_config"]), dropout=dropout, kernels=kernels)
    load_model_state(model, ckpt["model"], "the checkpoint")
    return model


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that names mismatched shapes and keys."""
    check_model_state({k: v.shape for k, v in model.state_dict().items()}, state, source)
    model.load_state_dict(state)


def check_model_state(shapes: dict[str, torch.Size], state: dict[str, torch.Tensor], source: str) -> None:
    """Explain why `state` cannot load into a model with these whole (unsharded) shapes by name."""
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(shapes[k])}"
                for k, v in state.items() if k in shapes and shapes[k] != v.shape]
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
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
