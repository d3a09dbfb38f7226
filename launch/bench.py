"""Benchmarks: `python launch/bench.py MODE [--key=value ...]`; `--help` after a mode lists its keys.

Each mode is a module of benchmarks/ with a `main(argv)`; results go to
docs/benchmarks.md together with the command that produced them.
"""
from __future__ import annotations

import importlib


from gpt.cli import run_main
from gpt.errors import GPTError

MODES = {
    "kernels": "benchmarks.kernels",  # our Triton ops against torch, forward + backward
    "loader": "benchmarks.loader",    # loader throughput and resident memory on synthetic shards
    "strategies": "benchmarks.strategies",  # memory per rank of each strategy, by formula, for GPT-2 sizes
    "train": "benchmarks.train",      # end-to-end training step: AdamW impls, bf16, compile, attention side by side
    "sample": "benchmarks.sample",    # generation: cache-free (nanoGPT) vs KV cache, window shift, batching, compile
    "memory": "benchmarks.memory",    # one step's peak memory at a model's shape, with and without activation checkpointing
    "time-to-loss": "benchmarks.time_to_loss",  # wall time and tokens to a val loss: classic vs fast recipe, ablations
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in MODES:
        given = f"unknown mode {argv[0]!r}" if argv else "no mode given"
        raise GPTError(f"{given}: usage: python launch/bench.py {{{'|'.join(MODES)}}} [--key=value ...].")
    importlib.import_module(MODES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    run_main(main)
