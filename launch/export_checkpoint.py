"""Write a run's latest checkpoint (any strategy, any ZeRO stage) as a plain, single-file ckpt.pt.

    python launch/export_checkpoint.py --out_dir=out-ds --output_dir=out-ds-plain

launch/sample.py reads a DeepSpeed out_dir directly; export when you want a file
to keep or share that needs neither DeepSpeed nor the shards.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gpt.checkpoint import load_checkpoint, save_checkpoint
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import opt, parse_args

# what sampling and finetuning read; a run's optimizer state, RNG streams and data position stay behind
PLAIN = ("model", "model_config", "config", "tokenizer", "dataset", "iter_num", "best_val_loss")
USAGE = "usage: python launch/export_checkpoint.py --out_dir=RUN --output_dir=DIR"


@dataclasses.dataclass
class ExportConfig:
    out_dir: str = opt("out", "the training run's folder (a DeepSpeed run's too)")
    output_dir: str = opt("out-plain", "where the plain ckpt.pt is written")


def main(argv: list[str]) -> None:
    cfg = parse_args(ExportConfig, argv, USAGE)
    if Path(cfg.output_dir).resolve() == Path(cfg.out_dir).resolve():
        raise GPTError("--output_dir must differ from --out_dir: export writes a new folder beside the run.")
    ckpt = load_checkpoint(cfg.out_dir)
    path = save_checkpoint({k: ckpt[k] for k in PLAIN if k in ckpt}, cfg.output_dir)
    print(f"wrote {path} (iter {ckpt['iter_num']}); sample with: python launch/sample.py --out_dir={cfg.output_dir}")


if __name__ == "__main__":
    run_main(main)
