"""Loader benchmark: micro-batches/s, tokens/s and resident memory on synthetic GPT-2-sized shards.

    python launch/bench.py loader [--sizes_gb=2,8] [--seconds=10] [--key=value ...]

For each corpus size, writes shards of random GPT-2 ids (uint16) under
--tmp_dir, then, in a fresh process pinned to one CPU core, drives `ranks`
BatchLoaders (rank r of `ranks`, one micro-batch per rank per step: the global
batch of an 8-GPU GPT-2 124M run) through `next_batch()`, prefetch thread on,
for --seconds per sampling mode. Throughput is given per wall second and per
CPU second (the latter is what the loader costs when other work shares the
core). Resident memory (VmRSS) is sampled throughout;
the interpreter + torch baseline is reported apart. The shards are deleted after.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from data.splits import SplitWriter
from data.subword import GPT2_VOCAB, gpt2_meta
from gpt.errors import GPTError
from gpt.flags import opt, parse_args

USAGE = "usage: python launch/bench.py loader [--sizes_gb=2,8] [--seconds=10] [--key=value ...]"


@dataclasses.dataclass
class LoaderBenchConfig:
    sizes_gb: str = opt("2,8", "corpus sizes, GB of uint16 tokens on disk")
    sampling: str = opt("random,sequential", "sampling orders to measure")
    seconds: float = opt(10.0, "measured time per (size, sampling)")
    batch_size: int = opt(16, "sequences per micro-batch")
    block_size: int = opt(1024, "tokens per sequence")
    ranks: int = opt(8, "simulated data-parallel ranks, all in one process")
    shard_tokens: int = opt(25_000_000, "tokens per shard (50 MB: 8 GB = 160 shards)")
    prefetch: int = opt(4, "micro-batches prepared ahead by the background thread")
    tmp_dir: str = opt(tempfile.gettempdir(), "where the synthetic corpus is written (and deleted after)")


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_corpus(root: Path, gb: float, shard_tokens: int) -> int:
    """Random GPT-2 ids as a dataset named "synthetic" under root; returns the train token count."""
    out = root / "synthetic"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    total = int(gb * 1e9) // 2
    train = SplitWriter(out, "train", GPT2_VOCAB, shard_tokens)
    for start in range(0, total, 1 << 24):
        train.write(rng.integers(0, GPT2_VOCAB, size=min(1 << 24, total - start), dtype=np.uint16))
    train_names = train.close()
    val = SplitWriter(out, "val", GPT2_VOCAB, shard_tokens)
    val.write(rng.integers(0, GPT2_VOCAB, size=1 << 20, dtype=np.uint16))
    meta = {"dataset": "synthetic", "tokenizer": gpt2_meta(), "tokens": {"train": total, "val": 1 << 20},
            "shards": {"train": train_names, "val": val.close()}}
    (out / "meta.json").write_text(json.dumps(meta))
    return total


def measure(root: str, sampling: str, cfg: LoaderBenchConfig) -> dict:
    """Runs in a fresh process on one core: drive the loaders, sample RSS."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch
    torch.set_num_threads(1)
    from data.dataset import open_dataset
    from data.loader import BatchLoader
    baseline = rss_mb()
    t0 = time.perf_counter()
    dataset = open_dataset(root, "synthetic")
    loaders = [BatchLoader(dataset, cfg.block_size, cfg.batch_size, cfg.ranks, seed=1337, rank=r,
                           world_size=cfg.ranks, sampling=sampling, prefetch=cfg.prefetch) for r in range(cfg.ranks)]
    open_s = time.perf_counter() - t0
    maps_at_start = sum(ld.train.reader.open_maps for ld in loaders)
    for ld in loaders:  # warm up: start the threads, fill their queues
        ld.next_batch()
    peak, batches, checksum = rss_mb(), 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < cfg.seconds:
        for ld in loaders:
            x, _ = ld.next_batch()
            checksum += int(x[0, 0])  # touch the batch, as a consumer would
        batches += len(loaders)
        if batches % (64 * len(loaders)) == 0:
            peak = max(peak, rss_mb())
    cpu = time.process_time() - cpu_start  # all threads of this process, which is pinned to one core
    peak = max(peak, rss_mb())
    tokens = batches * cfg.batch_size * cfg.block_size
    return {"sampling": sampling, "shards": len(dataset.files["train"]), "open_s": open_s,
            "maps_at_start": maps_at_start, "maps_open_per_rank": loaders[0].train.reader.open_maps,
            "batches_per_s": batches / elapsed, "tokens_per_s": tokens / elapsed,
            "steps_per_s": batches / len(loaders) / elapsed, "tokens_per_cpu_s": tokens / cpu,
            "cpu_share": cpu / elapsed, "rss_baseline_mb": baseline, "rss_peak_mb": peak,
            "epoch_windows": loaders[0].train.windows_per_epoch}


def main(argv: list[str]) -> None:
    cfg = parse_args(LoaderBenchConfig, argv, USAGE)
    sizes = [float(s) for s in cfg.sizes_gb.split(",") if s]
    samplings = [s for s in cfg.sampling.split(",") if s]
    free_gb = shutil.disk_usage(cfg.tmp_dir).free / 1e9
    if max(sizes) * 1.2 > free_gb:
        raise GPTError(f"--tmp_dir={cfg.tmp_dir} has {free_gb:.1f} GB free, too little for a {max(sizes)} GB corpus: "
                       "give a smaller --sizes_gb or another --tmp_dir.")
    print(f"loader bench: batch {cfg.batch_size} x block {cfg.block_size}, {cfg.ranks} ranks, {cfg.seconds:g} s per "
          f"run, one core; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    context = multiprocessing.get_context("spawn")
    for gb in sizes:
        root = Path(tempfile.mkdtemp(prefix="loader-bench-", dir=cfg.tmp_dir))
        try:
            t0 = time.perf_counter()
            total = write_corpus(root, gb, cfg.shard_tokens)
            print(f"\n{gb:g} GB corpus: {total:,} train tokens written in {time.perf_counter() - t0:.1f} s")
            for sampling in samplings:
                with context.Pool(1) as pool:
                    r = pool.apply(measure, (str(root), sampling, cfg))
                print(f"  {sampling:<10} {r['shards']} shards, opened in {r['open_s'] * 1e3:.0f} ms with "
                      f"{r['maps_at_start']} maps; {r['batches_per_s']:,.0f} micro-batches/s "
                      f"({r['steps_per_s']:,.0f} global steps/s), {r['tokens_per_s'] / 1e6:,.1f} M tokens/s "
                      f"(wall; the core was ours {100 * r['cpu_share']:.0f}% of the time: "
                      f"{r['tokens_per_cpu_s'] / 1e6:,.1f} M tokens per CPU-second); "
                      f"RSS peak {r['rss_peak_mb']:.0f} MB (interpreter + torch before opening: "
                      f"{r['rss_baseline_mb']:.0f} MB); maps held per rank at the end: {r['maps_open_per_rank']}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
