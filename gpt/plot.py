"""out_dir/loss.png: train and val loss against iterations, drawn headless.

Uses matplotlib's object API with the Agg canvas, never pyplot, so it needs no display,
touches no global backend state and is safe to call from a training process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

Series = Sequence[tuple[int, float]]

TRAIN_COLOR = "#1f77b4"  # matplotlib's default blue and orange, so the plot looks familiar
VAL_COLOR = "#ff7f0e"
# log-scale the loss axis once the curve spans more than this factor: the late, slow
# improvements then stay visible next to the first steep drop
LOG_SCALE_RATIO = 2.0


def plot_losses(path: str | Path, train_steps: Series, train_evals: Series, val_evals: Series, title: str) -> Path:
    """Draw the logged per-step train loss (thin), eval-time train and val loss (markers); write `path` atomically.

    Each series is (iteration, loss) pairs; empty series are left out of the plot and the legend.
    """
    from matplotlib.figure import Figure  # imported here: only runs that plot pay for matplotlib
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if train_steps:
        ax.plot(*zip(*train_steps), color=TRAIN_COLOR, alpha=0.35, linewidth=1.0, label="train loss (each logged step)")
    if train_evals:
        ax.plot(*zip(*train_evals), color=TRAIN_COLOR, linewidth=2.0, marker="o", markersize=4,
                label="train loss (eval)")
    if val_evals:
        ax.plot(*zip(*val_evals), color=VAL_COLOR, linewidth=2.0, marker="o", markersize=4, label="val loss (eval)")
    values = [loss for series in (train_steps, train_evals, val_evals) for _, loss in series if loss > 0]
    if values and max(values) / min(values) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
        # plain numbers at 1, 1.5, 2, 3, 4, 5, 7 ×10^k: readable losses, not 4×10⁰
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("loss (nats per token, log scale)")
    else:
        ax.set_ylabel("loss (nats per token)")
    ax.set_xlabel("iteration")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if values:
        ax.legend(loc="upper right")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)  # a viewer never sees half a file
    return path
