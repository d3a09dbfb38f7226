"""Turn a DeepSpeed checkpoint (any ZeRO stage) into a plain checkpoint dict that sample.py reads.

Stage 0 keeps whole weights in mp_rank_00_model_states.pt; stages 1-3 keep fp32
master weights sharded in the optimizer files, which DeepSpeed's zero_to_fp32
reassembles. Our trainer state rides along as the engine's client state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt.checkpoint import FORMAT, VERSION
from gpt.errors import GPTError


def is_deepspeed_checkpoint(out_dir: str | Path) -> bool:
    return (Path(out_dir) / "latest").is_file()


def saved_client_state(out_dir: str | Path) -> dict[str, Any]:
    """The rank-0 model-states file of the latest DeepSpeed checkpoint, with our trainer state in it."""
    return _latest_states(Path(out_dir))[1]


def _latest_states(out_dir: Path) -> tuple[str, dict[str, Any]]:
    tag = (out_dir / "latest").read_text().strip()
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


def plain_from_deepspeed(out_dir: str | Path) -> dict[str, Any]:
    """The latest DeepSpeed checkpoint in out_dir as a plain (fp32, unsharded) checkpoint dict."""
    out_dir = Path(out_dir)
    tag, states = _latest_states(out_dir)
    if states.get("zero_stage", 0) == 0:
        model = {k: v.float() for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        model = dict(get_fp32_state_dict_from_zero_checkpoint(str(out_dir), tag=tag))
        # zero_to_fp32 keeps one name per tied parameter; restore the tied name the model expects
        if "lm_head.weight" in model and "transformer.wte.weight" not in model:
            model["transformer.wte.weight"] = model["lm_head.weight"]
        if "transformer.wte.weight" in model and "lm_head.weight" not in model:
            model["lm_head.weight"] = model["transformer.wte.weight"]
    keep = ("model_config", "config", "tokenizer", "dataset", "iter_num", "best_val_loss")
    return {"format": FORMAT, "version": VERSION, "model": model, **{k: states[k] for k in keep if k in states}}
