"""Sample text from a trained checkpoint.

    python launch/sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=5 \
        --max_new_tokens=500 --temperature=0.8 --top_k=200

`--start=FILE:prompt.txt` reads the prompt from a file. Samples are printed under
numbered separators (token by token with `--stream`) and written to --output_dir, one
file per sample, with index.json saying how they were made: checkpoint and its
iteration, prompt, settings and seed, so a sample can be told apart and reproduced.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Callable, Optional


import torch

from data.tokenizer import tokenizer_from_meta
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.cli import run_main
from gpt.atomic import write_text_atomic
from gpt.errors import GPTError
from gpt.flags import choice, opt, parse_args
from gpt.generate import decode_stream, generate, generate_stream
from gpt.runtime import DTYPES, autocast, check_device_name, resolve_device, resolve_dtype

USAGE = "usage: python launch/sample.py --out_dir=DIR [--start=TEXT|FILE:path] [--key=value ...]"


@dataclasses.dataclass
class SampleConfig:
    out_dir: str = opt("out-shakespeare-char", "the training run's folder (its latest checkpoint), or a .pt file")
    start: str = opt("\n", "the prompt, or FILE:path to read it from a file")
    num_samples: int = opt(10, "samples to draw")
    max_new_tokens: int = opt(500, "tokens generated per sample")
    temperature: float = opt(0.8, "divides the logits; 0 = greedy")
    top_k: Optional[int] = opt(200, "keep only the k most likely tokens; None = all")
    top_p: Optional[float] = opt(None, "keep the smallest set of tokens whose probability reaches p; None = all")
    seed: int = opt(1337, "the sampling seed: the same seed gives the same samples")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto (bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU) | float32 | bfloat16 | float16")
    output_dir: str = opt("shakespeare_output", "where sample_NNN.txt and index.json are written")
    use_kv_cache: bool = opt(True, "decode with a KV cache (False = recompute the context for every token, as nanoGPT)")
    stream: bool = opt(False, "print tokens as they are generated; the same text as without it")


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
    check_device_name("device", cfg.device)
    choice("dtype", cfg.dtype, DTYPES)
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
    cfg = validate(parse_args(SampleConfig, argv, USAGE))
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
    kwargs = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator,
                  use_cache=cfg.use_kv_cache)
    files = []
    for i in range(1, cfg.num_samples + 1):
        print(f"---------- sample {i}/{cfg.num_samples} ----------", flush=True)
        with autocast(device, dtype):
            if cfg.stream:
                text = stream_sample(model, ids, cfg.max_new_tokens, tokenizer.decode, kwargs)
            else:
                text = tokenizer.decode(generate(model, ids, cfg.max_new_tokens, **kwargs)[0].tolist())
                print(text)
        files.append(f"sample_{i:03d}.txt")
        (out / files[-1]).write_text(text, encoding="utf-8")
    write_index(out, cfg, prompt, ckpt["iter_num"], files)
    print(f"---------- {cfg.num_samples} sample(s) written to {out}/ with index.json "
          f"(from {cfg.out_dir}, iter {ckpt['iter_num']})")


def stream_sample(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int,
                  decode: Callable[[list[int]], str], kwargs: dict[str, Any]) -> str:
    """Print the prompt, then each piece of text as soon as its tokens exist; return the whole sample's text."""
    prompt_ids = ids[0].tolist()
    new_ids = (int(t) for t in generate_stream(model, ids, max_new_tokens, **kwargs))
    pieces = [decode(prompt_ids)]
    print(pieces[0], end="", flush=True)
    for piece in decode_stream(new_ids, decode):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(pieces)


def write_index(out: Path, cfg: SampleConfig, prompt: str, ckpt_iter: int, files: list[str]) -> Path:
    """out/index.json: which checkpoint, prompt, settings and seed made the sample files listed in it."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out_dir", "start", "output_dir", "seed")}
    index = {"checkpoint": str(Path(cfg.out_dir).resolve()), "checkpoint_iter": ckpt_iter, "prompt": prompt,
             "start": cfg.start, "seed": cfg.seed, "settings": settings, "samples": files,
             "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path = out / "index.json"
    write_text_atomic(path, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    run_main(main)
