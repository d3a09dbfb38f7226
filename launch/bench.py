"""Benchmarks: `python launch/bench.py MODE [--key=value ...]`; `--help` after a mode lists its keys.

Each mode lives beside the code it measures and exposes `main(argv)`; results go
to docs/benchmarks.md together with the command that produced them.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from gpt.cli import run_main
from gpt.errors import GPTError

MODES = {
    "kernels": "kernels.bench",  # our Triton ops against torch, forward + backward
    "loader": "data.bench",      # loader throughput and resident memory on synthetic shards
    "train": "gpt.bench",        # end-to-end training step: AdamW impls, bf16, compile, attention side by side
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in MODES:
        given = f"unknown mode {argv[0]!r}" if argv else "no mode given"
        raise GPTError(f"{given}: usage: python launch/bench.py {{{'|'.join(MODES)}}} [--key=value ...].")
    importlib.import_module(MODES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    run_main(main)
