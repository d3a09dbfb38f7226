"""Write a DeepSpeed run's latest checkpoint (any ZeRO stage) as a plain, single-file ckpt.pt.

    python launch/export_checkpoint.py --out_dir=out-ds --output_dir=out-ds-plain

launch/sample.py reads a DeepSpeed out_dir directly; export when you want a file
to keep or share that needs neither DeepSpeed nor the shards.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from gpt.checkpoint import save_checkpoint
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import build_config, help_text, split_argv
from gpt.strategy.deepspeed_export import is_deepspeed_checkpoint, plain_from_deepspeed


@dataclasses.dataclass
class ExportConfig:
    out_dir: str = "out"
    output_dir: str = "out-plain"


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        print(help_text(ExportConfig, "usage: python launch/export_checkpoint.py --out_dir=DS_RUN --output_dir=DIR"))
        return
    _, overrides = split_argv(argv, allow_positional=False)
    cfg = build_config(ExportConfig, {}, overrides)
    if not is_deepspeed_checkpoint(cfg.out_dir):
        raise GPTError(f"{cfg.out_dir} holds no DeepSpeed checkpoint (no `latest` file): "
                       "give --out_dir of a run trained with --strategy=deepspeed.")
    if Path(cfg.output_dir).resolve() == Path(cfg.out_dir).resolve():
        raise GPTError("--output_dir must differ from --out_dir: a DeepSpeed run's folder is read through its `latest` file.")
    ckpt = plain_from_deepspeed(cfg.out_dir)
    path = save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, cfg.output_dir)
    print(f"wrote {path} (iter {ckpt['iter_num']}); sample with: python launch/sample.py --out_dir={cfg.output_dir}")


if __name__ == "__main__":
    run_main(main)
