"""Generation speed, variants side by side: `python launch/bench.py sample --out_dir=RUN [--key=value ...]`.

Every variant samples the same prompt from the same checkpoint with the same settings and the
same seeds (sample i draws with seed + i - 1, as launch/sample.py does); they differ in how.
A variant is the sampler's defaults (a KV cache, a window that moves half a block at a time
once full, all samples in one batch, eager) with changes joined by '+':
  nocache   no KV cache: the whole context is recomputed for every token
  shift1    the window moves one token at a time (--window_shift=1: nanoGPT's contexts)
  serial    one sample after another (batch of one), as launch/sample.py did before batching
  compile   the one-token decode step compiled (--compile=True)
`nanogpt` is nocache+shift1+serial: what nanoGPT's sample.py does. `shift1+serial` is this
sampler before the chunked window: a cache, rebuilt from the whole window for every token once
the sample outgrows block_size.

Each variant runs once untimed (the compile happens there; its time is reported), then all are
timed in rounds, the order rotating each round so that load that comes and goes on a shared
machine falls on all of them. The speed-up is the median over rounds of the first variant's
time over this one's in the same round. The text column gives each distinct output a letter:
variants with the same letter produced the same tokens (the cache, batching and compile change
the speed; only the window changes the contexts, hence the text). The table comes last.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch

from data.tokenizer import tokenizer_from_meta
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.errors import GPTError
from gpt.flags import choice, opt, parse_args
from gpt.generate import generate, window_plan
from gpt.runtime import DTYPES, autocast, check_device_name, resolve_device, resolve_dtype

USAGE = "usage: python launch/bench.py sample --out_dir=RUN [--key=value ...]"
CHANGES = ("default", "nanogpt", "nocache", "shift1", "serial", "compile")


@dataclasses.dataclass
class SampleBenchConfig:
    out_dir: str = opt("out-shakespeare-char-cpu", "the training run's folder (its latest checkpoint), or a .pt file")
    start: str = opt("ROMEO:", "the prompt")
    num_samples: int = opt(2, "samples per run")
    max_new_tokens: int = opt(500, "tokens generated per sample")
    temperature: float = opt(0.8, "as launch/sample.py")
    top_k: Optional[int] = opt(200, "as launch/sample.py")
    seed: int = opt(1337, "sample i draws with seed + i - 1, in every variant")
    variants: str = opt("nanogpt,shift1+serial,nocache,default,compile",
                        "comma-separated variants, each changes joined by '+': " + ", ".join(CHANGES))
    rounds: int = opt(5, "timed rounds; each runs every variant once")
    threads: int = opt(0, "torch intra-op threads; 0 = torch's default (one per core)")
    device: str = opt("cpu", "cpu | cuda | cuda:N | mps | auto")
    dtype: str = opt("auto", "as launch/sample.py: auto = bf16 on GPUs that have it, fp32 on CPU")


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one variant generates."""

    name: str
    cache: bool
    shift: Optional[int]  # None = the default, half a block
    serial: bool
    compile: bool


def parse_variant(name: str) -> Variant:
    """`shift1+serial` -> a Variant; `default` (or an empty change list) is the sampler's defaults."""
    parts = [p for p in name.split("+") if p]
    unknown = [p for p in parts if p not in CHANGES]
    if not parts or unknown:
        raise GPTError(f"--variants: {name!r} is not a variant: join changes with '+' from {', '.join(CHANGES)} "
                       "(e.g. shift1+serial).")
    v = Variant(name, cache=True, shift=None, serial=False, compile=False)
    for p in parts:
        if p == "nanogpt":
            v = dataclasses.replace(v, cache=False, shift=1, serial=True)
        elif p == "nocache":
            v = dataclasses.replace(v, cache=False)
        elif p == "shift1":
            v = dataclasses.replace(v, shift=1)
        elif p == "serial":
            v = dataclasses.replace(v, serial=True)
        elif p == "compile":
            v = dataclasses.replace(v, compile=True)
    return v


@dataclasses.dataclass
class Result:
    variant: Variant
    seconds: list[float]  # one per round
    first_s: float
    text: str  # a letter: variants with the same letter produced the same tokens

    def speedup_over(self, base: "Result") -> float:
        """The median over rounds of base's time over this one's in the same round (load that comes
        and goes between rounds cancels out of the ratio)."""
        return statistics.median(b / r for b, r in zip(base.seconds, self.seconds))


def sample_once(model: torch.nn.Module, ids: torch.Tensor, v: Variant, bench: SampleBenchConfig) -> torch.Tensor:
    """The variant's samples (num_samples, prompt + max_new_tokens), sample i drawn with seed + i - 1."""
    gens = [torch.Generator(device=ids.device).manual_seed(bench.seed + i) for i in range(ids.size(0))]
    kw = dict(temperature=bench.temperature, top_k=bench.top_k, use_cache=v.cache, window_shift=v.shift,
              compile=v.compile)
    if v.serial:
        return torch.cat([generate(model, ids[i:i + 1], bench.max_new_tokens, generator=[g], **kw)
                          for i, g in enumerate(gens)])
    return generate(model, ids, bench.max_new_tokens, generator=gens, **kw)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def run(model: torch.nn.Module, ids: torch.Tensor, variants: list[Variant], bench: SampleBenchConfig,
        dtype: torch.dtype, say: Callable[[str], None] = print) -> list[Result]:
    """Warm every variant up once, then time them in rotating rounds."""
    device = ids.device
    first: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    with autocast(device, dtype):
        for v in variants:
            first[v.name], outputs[v.name] = timed(lambda: sample_once(model, ids, v, bench), device)
            say(f"warmed up {v.name}: {first[v.name]:.2f} s")
        for rnd in range(bench.rounds):
            shift = rnd % len(variants)
            for v in variants[shift:] + variants[:shift]:
                s, out = timed(lambda: sample_once(model, ids, v, bench), device)
                if not torch.equal(out, outputs[v.name]):
                    raise GPTError(f"variant {v.name} gave other samples in round {rnd + 1} than in its first run: "
                                   "the same seeds must give the same tokens.")
                seconds[v.name].append(s)
            say(f"round {rnd + 1}/{bench.rounds}: " + ", ".join(f"{v.name} {seconds[v.name][-1]:.2f} s"
                                                                 for v in variants))
    letters: list[torch.Tensor] = []
    results = []
    for v in variants:
        same = next((i for i, o in enumerate(letters) if torch.equal(o, outputs[v.name])), None)
        if same is None:
            letters.append(outputs[v.name])
            same = len(letters) - 1
        results.append(Result(v, seconds[v.name], first[v.name], chr(ord("A") + same)))
    return results


def table(results: list[Result], model: torch.nn.Module, tokens: int) -> str:
    """Markdown, one row per variant, with the speed-up over the first row taken round by round."""
    base = results[0]
    lines = [f"| variant | KV cache | window moves by | samples | compile | s per run, median (min-max) | "
             f"tokens/s | first run s | text | speed vs {base.variant.name}, paired by round |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | :---: | ---: |"]
    for r in results:
        v = r.variant
        rolling, shift = window_plan(model, v.shift, v.cache)
        shift = f"{shift} (rolling cache)" if rolling else shift
        med = statistics.median(r.seconds)
        lines.append(f"| {v.name} | {'yes' if v.cache else 'no'} | {shift} | {'one at a time' if v.serial else 'batch'} | "
                     f"{'yes' if v.compile else 'no'} | {med:.2f} ({min(r.seconds):.2f}-{max(r.seconds):.2f}) | "
                     f"{tokens / med:,.0f} | {r.first_s:.1f} | {r.text} | {r.speedup_over(base):.2f}x |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    bench = parse_args(SampleBenchConfig, argv, USAGE)
    if bench.rounds < 1 or bench.num_samples < 1 or bench.max_new_tokens < 1:
        raise GPTError("--rounds, --num_samples and --max_new_tokens must each be at least 1.")
    if bench.threads < 0:
        raise GPTError(f"--threads={bench.threads} must be 0 (torch's default) or a number of threads.")
    check_device_name("device", bench.device)
    choice("dtype", bench.dtype, DTYPES)
    variants = [parse_variant(n.strip()) for n in bench.variants.split(",") if n.strip()]
    if not variants or len({v.name for v in variants}) != len(variants):
        raise GPTError(f"--variants={bench.variants!r} must name at least one variant, each once.")
    if bench.threads:
        torch.set_num_threads(bench.threads)
    device = resolve_device(bench.device)
    dtype = resolve_dtype(bench.dtype, device)
    ckpt = load_checkpoint(bench.out_dir)
    model = model_from_checkpoint(ckpt).to(device).eval()
    prompt = tokenizer_from_meta(ckpt["tokenizer"]).encode(bench.start)
    ids = torch.tensor([prompt] * bench.num_samples, dtype=torch.long, device=device)
    results = run(model, ids, variants, bench, dtype)
    c = model.config
    print(f"\n{bench.out_dir} (iter {ckpt['iter_num']}): {c.n_layer} layers x {c.n_head} heads x {c.n_embd} wide, "
          f"block {c.block_size}; {bench.num_samples} samples x {bench.max_new_tokens} tokens from {bench.start!r} "
          f"({len(prompt)} tokens), temperature {bench.temperature}, top_k {bench.top_k}; {device}, "
          f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"{bench.rounds} rounds after one warm-up run each\n")
    print(table(results, model, bench.num_samples * bench.max_new_tokens))
