"""Muon: momentum orthogonalised by Newton-Schulz, for the hidden weight matrices; AdamW for the rest.

Muon (Keller Jordan et al., 2024; "Muon: An optimizer for hidden layers in neural
networks") updates a weight matrix W (m x n) with the nearest semi-orthogonal matrix
to its Nesterov momentum:

    M <- mu M + (1 - mu) G                   momentum, an EMA of the gradients G
    U  = (1 - mu) G + mu M                   Nesterov: look one step ahead
    O  = U (U^T U)^(-1/2)  ~  NS_k(U / |U|_F)     all singular values set to ~1
    W <- W (1 - lr wd) - lr sqrt(max(1, m/n)) O

So every direction the gradient moves gets a step of the same size: the rare
directions that plain momentum would barely move are pushed as hard as the common
ones. (U^T U)^(-1/2) is never computed: the quintic Newton-Schulz iteration

    X <- a X + (b A + c A^2) X,   A = X X^T,   (a, b, c) = (3.4445, -4.7750, 2.0315)

applied k times (5 by default) to X = U / |U|_F (so every singular value starts in
(0, 1]) drives each singular value s through p(s) = a s + b s^3 + c s^5, whose
steep slope at 0 lifts small ones fast; the coefficients trade exactness for speed,
so singular values end in roughly [0.7, 1.2], not at 1 (tests/gpt/test_muon.py).
It works on the shorter side (X X^T is min(m, n) square) and in bf16 on GPUs
(fp32 elsewhere: this AVX2 CPU runs bf16 matmuls ~100x slower than fp32).
A weight that stacks several matrices (c_attn's q, k and v) is orthogonalised
one matrix at a time, as if they were separate weights.

Everything that is not a hidden matrix (embeddings, the head, norms, biases) takes
AdamW steps, through torch's own AdamW arithmetic (`torch.optim.adam.adam` with
decoupled weight decay, fused where AdamW would be), so those parameters train
exactly as `optimizer=adamw` trains them; one optimizer, one state_dict.

Across data-parallel ranks (DDP): the gradients are already all-reduced, so every
rank updates every momentum buffer the same way (cheap, elementwise), then
orthogonalises only its share of the matrices (matrix i on rank i mod world) and
broadcasts its results to the others: each rank does 1/world of the Newton-Schulz
work, and since a matrix is orthogonalised by the same code on the same input as
in one process, the steps are those of one process. State stays whole on every
rank, so a checkpoint (written by rank 0) resumes on any number of ranks.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.optim.adam import adam

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int = 5, stacked: int = 1) -> torch.Tensor:
    """Newton-Schulz approximation of U (U^T U)^(-1/2) for a matrix (m, n), or `stacked` matrices on top of
    each other in its rows; returned in the input's dtype and shape."""
    a, b, c = NS_COEFFICIENTS
    m, n = update.shape
    x = update.to(torch.bfloat16 if update.is_cuda else torch.float32)
    if stacked > 1:
        x = x.reshape(stacked, m // stacked, n)
    tall = x.size(-2) > x.size(-1)
    if tall:  # work on the short side: X X^T is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    # b A + c A^2 and a X + B X as one multiply-add each (addmm): on this CPU the separate scalings and
    # sums cost as much as the small matmuls themselves
    madd = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        A = x @ x.mT
        B = madd(A, A, A, beta=b, alpha=c)
        x = madd(x, B, x, beta=a)
    if tall:
        x = x.mT
    # contiguous: a transposed view would reach another rank's broadcast in the wrong element order
    return x.reshape(m, n).to(update.dtype).contiguous()


def shape_scale(rows: int, cols: int) -> float:
    """sqrt(max(1, rows/cols)): a tall matrix's orthogonal update has a smaller RMS per entry; this evens it."""
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon on groups with `use_muon=True` (2-D weights; `stacked` matrices each), AdamW on the other groups.

    Muon groups take `lr`, `momentum`, `ns_steps`, `weight_decay`, `stacked`; AdamW groups take `lr`,
    `betas`, `eps`, `weight_decay`. `adamw_impl` is "fused", "foreach" or "loop". With `world_size` > 1
    (DDP, process group initialised) the orthogonalisation is shared out across ranks (module docstring).
    """

    def __init__(self, param_groups: list[dict[str, Any]], adamw_impl: str = "foreach", rank: int = 0,
                 world_size: int = 1):
        defaults = dict(lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.0, stacked=1, betas=(0.9, 0.95),
                        eps=1e-8, use_muon=False)
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups hold 2-D weight matrices only")
        self.adamw_impl = adamw_impl
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if not group["use_muon"]:
                self._adamw_step(group)
        self._muon_step([g for g in self.param_groups if g["use_muon"]])
        return loss

    def _adamw_step(self, group: dict[str, Any]) -> None:
        """torch's AdamW arithmetic on this group, its state kept under the same names torch.optim.AdamW uses."""
        fused = self.adamw_impl == "fused"
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                # as torch.optim.AdamW: the step counter is a tensor on the parameter's device when fused
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if fused
                                 else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif fused and state["step"].device != p.device:  # a checkpoint read onto the CPU, resumed on a GPU
                state["step"] = state["step"].to(p.device, torch.float32)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=self.adamw_impl == "foreach", fused=fused,
             decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _muon_step(self, groups: list[dict[str, Any]]) -> None:
        """Momentum for every matrix here; Newton-Schulz for this rank's share; the others' results by broadcast."""
        work = []  # (param, group, Nesterov update), in the same order on every rank
        for group in groups:
            mu = group["momentum"]
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)  # every rank must reach every broadcast
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                work.append((p, group, grad.lerp(buf, mu)))
        shared = self.world_size > 1 and dist.is_available() and dist.is_initialized()
        updates, handles = [], []
        for i, (p, group, nesterov) in enumerate(work):
            owner = i % self.world_size if shared else self.rank
            if owner == self.rank:
                update = orthogonalize(nesterov, group["ns_steps"], group["stacked"])
            else:
                update = torch.empty_like(nesterov)
            if shared:
                handles.append(dist.broadcast(update, src=owner, async_op=True))
            updates.append(update)
        for handle in handles:
            handle.wait()
        for (p, group, _), update in zip(work, updates):
            rows, cols = p.size(0) // group["stacked"], p.size(1)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * shape_scale(rows, cols))

    def describe(self) -> str:
        """One line for the start of a run: which parameters each half steps, and how ranks share the work."""
        muon = [p for g in self.param_groups if g["use_muon"] for p in g["params"]]
        adamw = [p for g in self.param_groups if not g["use_muon"] for p in g["params"]]
        line = (f"optimizer: Muon on {len(muon)} hidden matrices ({sum(p.numel() for p in muon):,} weights), "
                f"AdamW ({self.adamw_impl}) on {len(adamw)} tensors: embeddings, head, norms, biases "
                f"({sum(p.numel() for p in adamw):,} weights)")
        if self.world_size > 1:
            line += (f"; Newton-Schulz shared over {self.world_size} ranks (matrix i on rank i mod "
                     f"{self.world_size}, results broadcast)")
        return line
