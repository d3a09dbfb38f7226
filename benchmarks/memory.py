"""Memory of one training step, with and without activation checkpointing: `python launch/bench.py memory [CONFIG.yaml]`.

At the config's model shape (default configs/gpt2_124m.yaml: GPT-2 124M, block 1024, vocab
50304), each variant (benchmarks/train.py's names; `ckpt` turns activation checkpointing on) is
built by gpt/build.py as launch/train.py builds it, on the CPU in fp32, eager, one micro-batch
per step, and trained on random GPT-2 ids written to a temporary folder (the memory does not
depend on the data). A first step creates the AdamW state; the second is measured with the
profiler's memory events: the most bytes torch holds at once during the step beyond what was
allocated before it (activations, gradients, the backward's temporaries), and timed (under
the profiler, so the time is indicative only: benchmarks/train.py measures speed).
The weights and AdamW state held between steps are the same for every variant: 12 bytes per
parameter in fp32. Every variant starts from the same weights and batches, so the loss
column must agree: checkpointing recomputes, it does not change the numbers.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.loader import write_corpus
from benchmarks.train import Runner, parse_variant, split_argv_configs
from gpt.config import REPO_ROOT
from gpt.errors import GPTError
from gpt.flags import help_text, opt, wants_help

USAGE = "usage: python launch/bench.py memory [CONFIG.yaml] [--key=value ...] (training keys too, e.g. --batch_size=2)"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "gpt2_124m.yaml"


@dataclasses.dataclass
class MemoryBenchConfig:
    variants: str = opt("fused,fused+ckpt", "comma-separated variants as in `bench train`; ckpt = activation checkpointing")
    synthetic: bool = opt(True, "train on random GPT-2 ids in a temporary folder; False = the config's dataset")
    threads: int = opt(0, "torch intra-op threads; 0 = torch's default (one per core)")


def measure(cfg, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        runner = Runner(parse_variant(name, cfg), cfg)
        try:
            runner.step()  # creates the AdamW state, which then stays between steps
            start = time.perf_counter()
            peak = runner.peak_step_mib()
            ms = (time.perf_counter() - start) * 1e3
            loss = runner.losses_seen[-1]
        finally:
            runner.close()
        params = sum(p.numel() for p in runner.run.model.parameters())
        rows.append({"variant": name, "checkpointing": runner.variant.checkpointing, "ms": ms, "loss": loss,
                     "peak_mib": peak, "static_mib": 12 * params / 2**20, "params": params, "model": runner.run.cfg.model})
    return rows


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(help_text(MemoryBenchConfig, USAGE) + "\n\nand every training key: python launch/train.py --help")
        raise SystemExit(0)
    cfg, bench = split_argv_configs(argv, MemoryBenchConfig, USAGE, DEFAULT_CONFIG)
    if bench.threads < 0:
        raise GPTError(f"--threads={bench.threads} must be 0 (torch's default) or a number of threads.")
    if bench.threads:
        torch.set_num_threads(bench.threads)
    t = cfg.train
    t.device, t.dtype, t.compile, t.tokens_per_step, t.gradient_accumulation_steps = "cpu", "float32", False, 0, 1
    names = [n.strip() for n in bench.variants.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        if bench.synthetic:
            write_corpus(Path(tmp), gb=0.004, shard_tokens=1 << 22)  # 2M random GPT-2 ids
            cfg.data.data_dir, cfg.data.dataset, cfg.data.data_format = tmp, "synthetic", "auto"
        t.out_dir = str(Path(tmp) / "out")
        rows = measure(cfg, names)
    m = rows[0]["model"]  # as built: the vocabulary resolved from the data
    print(f"\n{m.n_layer} layers x {m.n_head} heads x {m.n_embd} wide, block {m.block_size}, vocab {m.vocab_size}, "
          f"batch {cfg.data.batch_size} ({cfg.data.batch_size * m.block_size:,} tokens per step), "
          f"{rows[0]['params']:,} parameters; fp32 on the CPU, eager, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; weights + AdamW state between steps: {rows[0]['static_mib']:,.0f} MiB\n")
    base = rows[0]["peak_mib"]
    print("| variant | activation checkpointing | peak MiB in a step, beyond weights + AdamW state | vs first row | "
          "ms/step, profiled | loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {'yes' if r['checkpointing'] else 'no'} | {r['peak_mib']:,.0f} | "
              f"{r['peak_mib'] / base:.2f}x | {r['ms']:,.0f} | {r['loss']:.6f} |")
