"""Run under torchrun by the tests: the peak memory each rank's model build adds, FSDP and ZeRO-3 against a plain
build, whether the sharded builds hold the plain build's weights, and whether whole weights given afterwards
(as a pretrained snapshot is) load into them. Writes build_memory_rank{R}.json to argv[1].

Peak memory is the kernel's own high-water mark of resident memory (VmHWM), reset before each build through
/proc/self/clear_refs. The test sets MALLOC_MMAP_THRESHOLD_, so every tensor's memory is mapped and returned to
the kernel on its own and resident memory follows live tensors. Each build runs once at a tiny shape first, so
first-use costs (28 MB for the first meta-device construction) are not counted as weights. Every measured model
stays alive until the end, so a later build cannot reuse an earlier one's pages; the plain build, measured
last, shows the measure works.
"""
import json
import os
import re
import sys
from functools import partial
from pathlib import Path

import torch

from gpt.config import load_config
from gpt.distributed import read_env
from gpt.model import GPT
from gpt.runtime import seed_everything
from gpt.strategy import build_strategy
from gpt.strategy.sharded_init import dim0_shard

SHAPE = ["--vocab_size=64", "--block_size=64", "--n_layer=8", "--n_head=8", "--n_embd=512", "--device=cpu",
         "--dtype=float32"]  # 25M parameters, 101 MB; the largest parameter is 4 MB
WARM_UP = ["--n_layer=1", "--n_embd=64"]


def status_kib(field: str) -> int:
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_added(build):
    """(bytes the resident high-water mark rose by while `build` ran, what it built)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = status_kib("VmRSS")
    seed_everything(1337)
    built = build()
    return (status_kib("VmHWM") - before) * 1024, built


out_dir, denv = Path(sys.argv[1]), read_env()
results = {}
strategies = {"fsdp": ["--strategy=fsdp"], "zero3": ["--strategy=deepspeed", "--zero_stage=3"]}
models = {}
for name, flags in strategies.items():
    strategy = build_strategy(load_config([*SHAPE, *flags]), denv, torch.device("cpu"), torch.float32, local_accum=1)
    strategy.build_model(partial(GPT, load_config([*SHAPE, *flags, *WARM_UP]).model))
    results[f"{name}_strategy"] = strategy
GPT(load_config([*SHAPE, *WARM_UP]).model)
for name, flags in strategies.items():
    make = partial(GPT, load_config([*SHAPE, *flags]).model)
    results[name], models[name] = peak_added(lambda: results[f"{name}_strategy"].build_model(make))
results["plain"], plain = peak_added(lambda: GPT(load_config(SHAPE).model))
results["model_bytes"] = sum(p.numel() * p.element_size() for p in plain.parameters())

whole = dict(plain.named_parameters())
results["fsdp_same_weights"] = all(torch.equal(p.to_local(), dim0_shard(whole[n].detach(), denv.rank, denv.world_size))
                                   for n, p in models["fsdp"].named_parameters())
deepspeed = results["zero3_strategy"].deepspeed
same = True
for n, p in models["zero3"].named_parameters():
    with deepspeed.zero.GatheredParameters([p]):
        same = same and torch.equal(p.data, whole[n].detach())
results["zero3_same_weights"] = same
other = {name: torch.randn_like(p) for name, p in plain.state_dict().items()}  # what a snapshot would hand over
other["lm_head.weight"] = other["transformer.wte.weight"]  # tied, as in any GPT-2 snapshot
for name in strategies:
    results[f"{name}_strategy"].load_weights(models[name], other, "a test snapshot")
results["fsdp_loads_weights"] = all(torch.equal(p.to_local(), dim0_shard(other[n], denv.rank, denv.world_size))
                                    for n, p in models["fsdp"].named_parameters())
same = True
for n, p in models["zero3"].named_parameters():
    with deepspeed.zero.GatheredParameters([p]):
        same = same and torch.equal(p.data, other[n])
results["zero3_loads_weights"] = same
results = {k: v for k, v in results.items() if not k.endswith("_strategy")}
(out_dir / f"build_memory_rank{os.environ['RANK']}.json").write_text(json.dumps(results))
