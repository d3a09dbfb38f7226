"""Train a GPT: `python launch/train.py [CONFIG.yaml] [--key=value ...]`.

With no config file, configs/shakespeare_char.yaml. `--help` lists every key.
"""
from __future__ import annotations

import sys

from gpt.build import build_run
from gpt.cli import debug_requested, run_main
from gpt.config import load_config
from gpt.trainer import Trainer


def main(argv: list[str]) -> None:
    Trainer(build_run(load_config(argv), debug=debug_requested(sys.argv))).run()


if __name__ == "__main__":
    run_main(main)
