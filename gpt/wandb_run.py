"""Weights & Biases for one training run, on rank 0, under <out_dir>/wandb/.

Three ways it runs, decided before `wandb.init` so that it never stops to ask for a login:
- online, when wandb finds credentials (WANDB_API_KEY, ~/.netrc from `wandb login`, settings);
- whatever WANDB_MODE says when it is set (offline: no account needed, `wandb sync` later);
- offline, with a one-line notice, when neither a key nor a mode is set.

Charts use the training iteration as their x axis (`iter`), not W&B's own step counter, so a
resumed run that repeats iterations after its last checkpoint still logs every point. A resumed
run passes the id saved in its checkpoint and continues the same W&B run (online), or writes a
new offline folder with the same id, which `wandb sync` uploads into that run in time order.
This module is only imported when --wandb_log=True: a run without it never imports wandb.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from gpt.errors import GPTError

# a metrics.jsonl record's kind becomes its W&B section: train/loss, eval/val_loss, ...
KINDS = ("train", "eval")


def choose_mode(wandb: Any, announce: Callable[[str], None], out_dir: Path) -> Optional[str]:
    """None to let wandb decide (a mode or credentials exist), or "offline" when it would ask for a login."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    if wandb.login(prompt=False, verify=False):  # finds `wandb login`'s ~/.netrc too; never prompts
        return None
    announce(f"wandb: no API key and no WANDB_MODE, logging offline under {out_dir / 'wandb'} "
             "(upload later with `wandb sync`; `wandb login` or WANDB_API_KEY to log online).")
    return "offline"


def start_run(out_dir: str | Path, config: dict[str, Any], project: str, name: str, run_id: Optional[str],
              announce: Callable[[str], None] = print) -> Any:
    """A live wandb Run logging under out_dir/wandb/, with the resolved config; resumes `run_id` when given."""
    try:
        import wandb
    except ImportError:
        raise GPTError("--wandb_log=True needs the wandb package: pip install -r requirements.txt "
                       "(or run with --wandb_log=False).") from None
    out_dir = Path(out_dir)
    mode = choose_mode(wandb, announce, out_dir)
    try:
        run = wandb.init(project=project, name=name, config=config, dir=str(out_dir), mode=mode,
                         id=run_id, resume="allow" if run_id else None)
    except wandb.errors.Error as err:  # e.g. a key W&B rejects, or no network for online logging
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GPTError(f"W&B could not start a run ({first_line}). Log offline with WANDB_MODE=offline (upload "
                       "later with `wandb sync`), fix the key or the network, or run with --wandb_log=False.") from None
    run.define_metric("iter")
    for kind in KINDS:
        run.define_metric(f"{kind}/*", step_metric="iter")
    return run


def log_record(run: Any, record: dict[str, Any]) -> None:
    """Log one metrics.jsonl record: its numbers under train/ or eval/, against its iteration."""
    values = {f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("kind", "iter", "time")}
    run.log({"iter": record["iter"], **values})
