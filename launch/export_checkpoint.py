"""Write a run's latest checkpoint (any strategy, any ZeRO stage) as a plain ckpt.pt, or as a Hugging Face folder.

    python launch/export_checkpoint.py --out_dir=out-ds --output_dir=out-ds-plain
    python launch/export_checkpoint.py --out_dir=out-gpt2-124m --output_dir=gpt2-hf --format=hf

launch/sample.py reads a DeepSpeed out_dir directly; export `plain` when you want a file
to keep or share that needs neither DeepSpeed nor the shards. `hf` writes config.json,
model.safetensors, the tokenizer's files and meta.json (gpt/hf_export.py), which
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads and `--init_from=DIR` starts from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gpt.checkpoint import load_checkpoint, save_checkpoint
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import choice, opt, parse_args

# what sampling and finetuning read; a run's optimizer state, RNG streams and data position stay behind
PLAIN = ("model", "model_config", "config", "tokenizer", "dataset", "iter_num", "best_val_loss")
FORMATS = ("plain", "hf")
USAGE = "usage: python launch/export_checkpoint.py --out_dir=RUN --output_dir=DIR [--format=plain|hf]"


@dataclasses.dataclass
class ExportConfig:
    out_dir: str = opt("out", "the training run's folder (a DeepSpeed run's too)")
    output_dir: str = opt("out-plain", "where the export is written")
    format: str = opt("plain", "plain (ckpt.pt, for launch/sample.py) | hf (a Hugging Face GPT-2 folder)")


def main(argv: list[str]) -> None:
    cfg = parse_args(ExportConfig, argv, USAGE)
    choice("format", cfg.format, FORMATS)
    if Path(cfg.output_dir).resolve() == Path(cfg.out_dir).resolve():
        raise GPTError("--output_dir must differ from --out_dir: export writes a new folder beside the run.")
    ckpt = load_checkpoint(cfg.out_dir)
    if cfg.format == "hf":
        from gpt.hf_export import export_hf
        files = export_hf(ckpt, cfg.output_dir, source=str(Path(cfg.out_dir).resolve()))
        print(f"wrote {', '.join(f.name for f in files)} to {cfg.output_dir} (iter {ckpt['iter_num']}); load with "
              f"transformers.GPT2LMHeadModel.from_pretrained({cfg.output_dir!r}), or train on with "
              f"--init_from={cfg.output_dir}")
        return
    path = save_checkpoint({k: ckpt[k] for k in PLAIN if k in ckpt}, cfg.output_dir)
    print(f"wrote {path} (iter {ckpt['iter_num']}); sample with: python launch/sample.py --out_dir={cfg.output_dir}")


if __name__ == "__main__":
    run_main(main)
