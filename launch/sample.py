"""Sample text from a trained checkpoint.

    python launch/sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=5 \
        --max_new_tokens=500 --temperature=0.8 --top_k=200

`--start=FILE:prompt.txt` reads the prompt from a file. All samples are generated as one
batch, sample i drawing from its own generator seeded with seed + i - 1: it is the same
sample whatever --num_samples is (up to floating-point rounding, which differs between batch
sizes). They are printed under numbered separators and written to --output_dir, one file
per sample, with index.json saying how they were made: checkpoint and its iteration,
prompt, settings and seeds, so a sample can be told apart and reproduced. With `--stream`
the first sample is printed token by token as the batch is generated, the others when it
ends: the same text as without it.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

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
    use_kv_cache: bool = opt(True, "decode with a KV cache (False = recompute the context for every token: slower, "
                                   "the same text except where a RoPE model's cache would roll; with "
                                   "--window_shift=1 exactly nanoGPT)")
    window_shift: Optional[int] = opt(None, "once a sample fills the block, the context moves this many tokens at a "
                                            "time, each move one prefill; 1 = nanoGPT's window (the whole block "
                                            "re-read per token); None = half a block, or for RoPE models a rolling "
                                            "cache (sliding-window attention, no re-read)")
    compile: bool = opt(False, "torch.compile the one-token decode step (CUDA graphs on a GPU); compiling takes "
                               "~20-60 s on a CPU, so it pays off for long runs")
    stream: bool = opt(False, "print the first sample token by token as it is generated; the same text as without it")


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
    if cfg.window_shift is not None and cfg.window_shift < 1:
        raise GPTError(f"--window_shift={cfg.window_shift} must be at least 1 (1 = nanoGPT's window; None = half a block).")
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
    model = model_from_checkpoint(ckpt, dropout=0.0).to(device).eval()
    block = model.config.block_size
    if cfg.window_shift is not None and cfg.window_shift > block:
        raise GPTError(f"--window_shift={cfg.window_shift} is more than this model's block_size of {block}: "
                       f"give 1 .. {block}, or leave it out (half a block).")
    ids = torch.tensor([tokenizer.encode(prompt)] * cfg.num_samples, dtype=torch.long, device=device)
    seeds = [cfg.seed + i for i in range(cfg.num_samples)]
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    kwargs = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generators,
                  use_cache=cfg.use_kv_cache, window_shift=cfg.window_shift, compile=cfg.compile)
    with autocast(device, dtype):
        if cfg.stream:
            texts = stream_samples(model, ids, cfg.max_new_tokens, tokenizer.decode, kwargs)
        else:
            texts = [tokenizer.decode(row) for row in generate(model, ids, cfg.max_new_tokens, **kwargs).tolist()]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, text in enumerate(texts, start=1):
        if i > 1 or not cfg.stream:  # a streamed first sample is already on the screen
            print(f"---------- sample {i}/{cfg.num_samples} ----------", flush=True)
            print(text)
        files.append(f"sample_{i:03d}.txt")
        (out / files[-1]).write_text(text, encoding="utf-8")
    write_index(out, cfg, prompt, ckpt["iter_num"], files, seeds)
    print(f"---------- {cfg.num_samples} sample(s) written to {out}/ with index.json "
          f"(from {cfg.out_dir}, iter {ckpt['iter_num']})")


def stream_samples(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int,
                   decode: Callable[[list[int]], str], kwargs: dict[str, Any]) -> list[str]:
    """Generate every row of ids as one batch, printing the first row's text (under its separator) as soon
    as its tokens exist; return each row's text, decoded whole as without streaming. The caller prints
    the other rows when the batch ends."""
    print(f"---------- sample 1/{ids.size(0)} ----------", flush=True)
    print(decode(ids[0].tolist()), end="", flush=True)
    new: list[torch.Tensor] = []

    def first_row() -> Iterator[int]:
        for token in generate_stream(model, ids, max_new_tokens, **kwargs):
            new.append(token)
            yield int(token[0, 0])

    for piece in decode_stream(first_row(), decode):
        print(piece, end="", flush=True)
    print()
    return [decode(row) for row in torch.cat([ids] + new, dim=1).tolist()]


def write_index(out: Path, cfg: SampleConfig, prompt: str, ckpt_iter: int, files: list[str],
                seeds: list[int]) -> Path:
    """out/index.json: which checkpoint, prompt, settings and seeds made the sample files listed in it
    (`seeds[i]` drew `samples[i]`: --seed=seeds[i] --num_samples=1 draws it again)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out_dir", "start", "output_dir", "seed")}
    index = {"checkpoint": str(Path(cfg.out_dir).resolve()), "checkpoint_iter": ckpt_iter, "prompt": prompt,
             "start": cfg.start, "seed": cfg.seed, "seeds": seeds, "settings": settings, "samples": files,
             "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path = out / "index.json"
    write_text_atomic(path, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    run_main(main)
