"""Muon across data-parallel ranks: each rank orthogonalises its share, and the steps are one process's."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpt.muon
from gpt.config import ModelConfig, OptimConfig
from gpt.model import GPT
from gpt.optim import build_optimizer
from tests.conftest import logged, tiny_argv
from tests.distributed.launch import assert_close, free_port, ok, rank_records, torchrun

CFG = OptimConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.05, muon_weight_decay=0.1)


def steps(rank: int, world: int) -> tuple[dict[str, torch.Tensor], int]:
    """Three Muon steps on the same gradients (seeded by step) on every rank; the weights and this rank's
    count of orthogonalised matrices."""
    torch.manual_seed(0)
    # relu2: c_fc is tall (64 x 16), so its update comes back through a transpose
    model = GPT(ModelConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, mlp="relu2"))
    opt = build_optimizer(model, CFG, "cpu", rank=rank, world_size=world)
    calls = 0
    real = gpt.muon.orthogonalize

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    gpt.muon.orthogonalize = counting
    try:
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
    finally:
        gpt.muon.orthogonalize = real
    return {n: p.detach().clone() for n, p in model.named_parameters()}, calls


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        weights, calls = steps(rank, world)
        torch.save({"weights": weights, "calls": calls}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_orthogonalisation_and_step_exactly_as_one_process(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single, total = steps(0, 1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert total == 3 * 8  # 8 hidden matrices a step
    assert [r["calls"] for r in ranks] == [total // 2, total // 2]  # each rank did half the Newton-Schulz work
    for r in ranks:
        for name, w in single.items():
            assert torch.equal(r["weights"][name], w), name  # bit for bit, every weight, on every rank


COMMON = dict(dropout=0.0, gradient_accumulation_steps=4, max_iters=12, lr_decay_iters=12, eval_interval=6,
              optimizer="muon", muon_lr=0.02, pos_emb="rope", qk_norm=True, mlp="relu2", lr_schedule="wsd")


@pytest.mark.long  # the job end to end; the sharing itself is checked bit for bit above, in a quicker spawn
def test_a_muon_run_on_two_ddp_ranks_matches_one_process(tiny_data, reference_losses, tmp_path):
    result = torchrun(["--strategy=ddp", *tiny_argv(tiny_data, tmp_path / "ddp", **COMMON)])
    ok(result)
    assert "Newton-Schulz shared over 2 ranks" in result.stdout
    worst = assert_close(logged(tmp_path / "ddp"), reference_losses(COMMON))  # measured 3.6e-7
    ranks = rank_records(tmp_path / "ddp", 2)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the ranks never drift apart
    print(f"Muon, DDP vs single, largest per-iteration loss difference over 12 iterations: {worst:.2e}")
