"""The end-of-run summary: what a run reached and what it cost, printed and written to out_dir/summary.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from gpt.mfu import MFU


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s, 0.8s: short enough for a progress line."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_summary(*, iters: int, tokens_per_iter: int, wall_s: float, evals: list[dict[str, Any]],
                session_train: list[dict[str, Any]], checkpoint: Optional[Path], mfu: Optional[MFU],
                files: dict[str, Path]) -> dict[str, Any]:
    """The summary as plain JSON values.

    `evals` covers the whole run (earlier sessions of a resumed run included); the throughput
    covers this session's logged steps, leaving out the first, which pays for warm-up (and
    compilation) whenever there are others. tokens_seen assumes tokens_per_iter did not change.
    """
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    steady = session_train[1:] or session_train
    seconds = sum(r["dt_ms"] for r in steady) / 1000.0
    tokens_per_s = len(steady) * tokens_per_iter / seconds if seconds > 0 else None
    return {
        "iters": iters,
        "tokens_seen": iters * tokens_per_iter,
        "wall_s": round(wall_s, 3),
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_iter": best["iter"] if best else None,
        "last_val_loss": evals[-1]["val_loss"] if evals else None,
        "mean_tokens_per_s": tokens_per_s,
        "mean_mfu": mfu.of(tokens_per_s) if mfu and tokens_per_s else None,
        "mfu_peak": mfu.peak.source if mfu else None,
        "checkpoint": str(checkpoint) if checkpoint else None,
        **{name: str(path) for name, path in files.items()},
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few aligned lines for the console."""
    lines = ["== run summary",
             f"   iterations    {s['iters']:,} ({s['tokens_seen']:,} tokens seen)"]
    if s["best_val_loss"] is not None:
        lines.append(f"   best val loss {s['best_val_loss']:.4f} at iter {s['best_val_iter']:,} "
                     f"(last {s['last_val_loss']:.4f})")
    speed = f"   wall time     {format_duration(s['wall_s'])} this session"
    if s["mean_tokens_per_s"]:
        speed += f"; mean {s['mean_tokens_per_s']:,.0f} tok/s"
    if s["mean_mfu"] is not None:
        speed += f", MFU {100 * s['mean_mfu']:.1f}% (peak: {s['mfu_peak']})"
    lines.append(speed)
    for name in ("checkpoint", "loss_plot", "metrics", "summary"):
        if s.get(name):
            lines.append(f"   {name.replace('_', ' '):<13} {s[name]}")
    return "\n".join(lines)
