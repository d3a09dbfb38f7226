"""Sample text from a trained checkpoint.

    python launch/sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=5 \
        --max_new_tokens=500 --temperature=0.8 --top_k=200

`--start=FILE:prompt.txt` reads the prompt from a file. Samples are printed under
numbered separators and written to --output_dir, one file per sample.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import torch

from data.tokenizer import tokenizer_from_meta
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.cli import run_main
from gpt.config import DEVICE_PATTERN, DTYPES
from gpt.errors import GPTError
from gpt.flags import build_config, help_text, split_argv
from gpt.generate import generate
from gpt.runtime import autocast, resolve_device, resolve_dtype

USAGE = "usage: python launch/sample.py --out_dir=DIR [--start=TEXT|FILE:path] [--key=value ...]"


@dataclasses.dataclass
class SampleConfig:
    out_dir: str = "out-shakespeare-char"
    start: str = "\n"
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: Optional[int] = 200
    top_p: Optional[float] = None
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    output_dir: str = "shakespeare_output"
    use_kv_cache: bool = True


def validate(cfg: SampleConfig) -> SampleConfig:
    if cfg.num_samples < 1:
        raise GPTError(f"--num_samples={cfg.num_samples} must be at least 1.")
    if cfg.max_new_tokens < 0:
        raise GPTError(f"--max_new_tokens={cfg.max_new_tokens} must not be negative.")
    if cfg.temperature < 0:
        raise GPTError(f"--temperature={cfg.temperature} must not be negative (0 = greedy).")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise GPTError(f"--top_k={cfg.top_k} must be at least 1 (or None for no top-k).")
    if cfg.top_p is not None and not 0.0 < cfg.top_p <= 1.0:
        raise GPTError(f"--top_p={cfg.top_p} must be in (0, 1].")
    if not DEVICE_PATTERN.match(cfg.device):
        raise GPTError(f"--device={cfg.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps.")
    if cfg.dtype not in DTYPES:
        raise GPTError(f"--dtype={cfg.dtype!r} is not one of {', '.join(DTYPES)}.")
    return cfg


def read_prompt(start: str) -> str:
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise GPTError(f"cannot read the prompt file {str(path)!r} given by --start=FILE:...: {err}.") from None


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        print(help_text(SampleConfig, USAGE))
        return
    _, overrides = split_argv(argv, allow_positional=False)
    cfg = validate(build_config(SampleConfig, {}, overrides))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    ckpt = load_checkpoint(cfg.out_dir)
    tokenizer = tokenizer_from_meta(ckpt["tokenizer"])
    prompt = read_prompt(cfg.start)
    if not prompt:
        raise GPTError("the prompt is empty: give at least one character with --start (the default is a newline).")
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    model = model_from_checkpoint(ckpt, dropout=0.0).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, cfg.num_samples + 1):
        with autocast(device, dtype):
            y = generate(model, ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                         top_p=cfg.top_p, generator=generator, use_cache=cfg.use_kv_cache)
        text = tokenizer.decode(y[0].tolist())
        print(f"---------- sample {i}/{cfg.num_samples} ----------")
        print(text)
        (out / f"sample_{i:03d}.txt").write_text(text, encoding="utf-8")
    print(f"---------- {cfg.num_samples} sample(s) written to {out}/ (from {cfg.out_dir}, iter {ckpt['iter_num']})")


if __name__ == "__main__":
    run_main(main)
