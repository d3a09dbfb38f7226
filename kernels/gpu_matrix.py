"""What the GPU compile check compiles: every kernel launch our launchers make on a GPU, per target.

Each case runs a launcher (attention forward and backward, the dropout mask, LayerNorm and RMSNorm
forward and backward, RoPE, cross-entropy, linear cross-entropy) on meta tensors, with the tiles the
launcher's own table picks for that target, while its module's kernels are swapped for
recorders. A recorded launch becomes a `Job`: the kernel and the exact signature, constexprs,
alignment hints and options that triton's JIT would build from those arguments, for one
target. So the check compiles what would run, and a launcher that changes its arguments
or tiles changes what is checked with it.

The problem sizes (head dims, dtypes, row widths, vocabularies) come from kernels/gpu_support.py,
which also decides where `auto` uses the kernels: the checked set and the allowed set are
written once.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

import torch
import triton.runtime.jit as triton_jit

from kernels import gpu_support
from kernels.gpu_support import KIB, Target

_fa = importlib.import_module("kernels.flash_attention")
_ln = importlib.import_module("kernels.layernorm")
_ce = importlib.import_module("kernels.cross_entropy")
_rms = importlib.import_module("kernels.rmsnorm")
_rope = importlib.import_module("kernels.rope")

_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Job:
    """One kernel compile for one target: what triton.compile takes, plus what the result is held to."""
    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    aligned: tuple[int, ...]  # indices of arguments specialised as divisible by 16 (pointers and ints)
    options: tuple[tuple[str, int], ...]
    target: Target
    shared_bound: int = field(compare=False)  # bytes: the tiles' declared shared_kib
    problem: str = field(compare=False)       # the case that launched it, for the table

    def config(self) -> str:
        """The compiled variant in a few words: the input's dtype, the constexprs, warps and stages."""
        consts = " ".join(f"{k}={_short_value(v)}" for k, v in self.constexprs)
        opts = dict(self.options)
        first = next(t.lstrip("*") for _, t in self.signature if t.startswith("*"))  # the input's dtype
        return f"{first} {consts} w{opts.get('num_warps', 4)} s{opts.get('num_stages', 3)}"


def _short_value(v: Any) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class Case:
    """One problem for one target: a launcher call on meta tensors with the tiles its table picks."""
    problem: str
    target: Target
    tiles: Any
    run: Callable[[], None]
    module: ModuleType


class _Recorder:
    def __init__(self, kernel: triton_jit.KernelInterface, log: list) -> None:
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: self.log.append((self.kernel, args, kwargs))


@contextlib.contextmanager
def recording(module: ModuleType) -> Iterator[list]:
    """Swap a module's @triton.jit kernels for recorders; yields the list of (kernel, args, kwargs) launched.

    Works under TRITON_INTERPRET=1 too (the kernels are then interpreter functions), so the tests can
    enumerate the matrix in-process; compiling needs a process without it.
    """
    log: list = []
    kernels = {name: v for name, v in vars(module).items() if isinstance(v, triton_jit.KernelInterface)}
    for name, kernel in kernels.items():
        setattr(module, name, _Recorder(kernel, log))
    try:
        yield log
    finally:
        for name, kernel in kernels.items():
            setattr(module, name, kernel)


def _constexpr_names(fn: Callable) -> set[str]:
    # the parameters annotated tl.constexpr (a string under `from __future__ import annotations`)
    return {name for name, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}


def job_from_launch(kernel: triton_jit.KernelInterface, args: tuple, kwargs: dict, target: Target,
                    shared_bound: int, problem: str) -> Job:
    """The compile triton's JIT would make for this launch: each argument specialised as the JIT does it
    (dtype, integer width, divisible by 16, an integer equal to 1 folded into a constant)."""
    fn = kernel.fn
    names = list(inspect.signature(fn).parameters)
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k in _OPTIONS))
    const_names = _constexpr_names(fn)
    signature, constexprs, aligned = [], [], []
    for i, name in enumerate(names):
        value = bound[name]
        if name in const_names:
            signature.append((name, "constexpr"))
            constexprs.append((name, value))
            continue
        kind, spec = triton_jit.native_specialize_impl(triton_jit.BaseBackend, value, False, True, True)
        signature.append((name, kind))
        if kind == "constexpr":
            constexprs.append((name, spec))
        elif isinstance(spec, str) and "D" in spec:
            aligned.append(i)
    return Job(fn.__module__, fn.__name__, tuple(signature), tuple(constexprs), tuple(aligned), options,
               target, shared_bound, problem)


def jobs_of(case: Case) -> list[Job]:
    """Run the case's launcher with recorders in place of its kernels; one job per kernel launched."""
    with recording(case.module) as log:
        case.run()
    bound = case.tiles.shared_kib * KIB
    return [job_from_launch(k, a, kw, case.target, bound, case.problem) for k, a, kw in log]


# ---------------------------------------------------------------- the problems

B, T, T_RAGGED, HEADS_WIDTH = 8, 1024, 1000, 768  # a GPT-2-sized step; T_RAGGED: a prompt's length


def _qkv(head_dim: int, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    # views of one (B, T, 3C) projection, as gpt/model.py makes them: the strides the kernels really see
    heads = max(1, HEADS_WIDTH // head_dim)
    c = heads * head_dim
    qkv = torch.empty(B, t, 3 * c, device="meta", dtype=dtype)
    return tuple(x.view(B, t, heads, head_dim).transpose(1, 2) for x in qkv.split(c, dim=2))


def attention_case(target: Target, head_dim: int, dtype: torch.dtype, causal: bool, dropout: bool,
                   t: int = T, backward: bool = True) -> Case | None:
    """Forward (and backward) attention as the model launches it; None when no tiles fit the target."""
    tiles = _fa.gpu_tiles(head_dim, dtype, target.max_shared)
    if tiles is None:
        return None
    p, seed = (0.1, 12345) if dropout else (0.0, 0)  # without dropout the launcher is handed seed 0

    def run() -> None:
        q, k, v = _qkv(head_dim, t, dtype)
        o, lse = _fa.attention_forward(q, k, v, seed, causal, p, head_dim ** -0.5, tiles)
        if backward:
            _fa.attention_backward(torch.empty_like(o), q, k, v, o, lse, seed, causal, p, head_dim ** -0.5, tiles)

    what = f"attention D={head_dim} {_SHORT[dtype]} {'causal' if causal else 'full'}{' dropout' if dropout else ''}"
    what += f" T={t}" + ("" if backward else " forward only")
    return Case(what, target, tiles, run, _fa)


def dropout_mask_case(target: Target) -> Case:
    """The dropout keep-mask kernel (tests and debugging draw the kernels' mask with it)."""
    tiles = _fa.gpu_tiles(64, torch.bfloat16, target.max_shared)
    return Case(f"dropout mask T={T}", target, tiles,
                lambda: _fa.dropout_keep_mask(12345, B * 12, T, 0.1, "meta"), _fa)


def layernorm_case(target: Target, n: int, dtype: torch.dtype, bias: bool, backward: bool = True) -> Case:
    """LayerNorm forward (and backward) on B*T rows of `n`, weight (and bias) in the input's dtype."""
    tiles = _ln.gpu_tiles(n)

    def run() -> None:
        x = torch.empty(B * T, n, device="meta", dtype=dtype)
        w = torch.empty(n, device="meta", dtype=dtype)
        y, mean, rstd = _ln.layer_norm_forward(x, w, w if bias else None, 1e-5, tiles=tiles)
        if backward:  # programs: 4 per SM of an A100 (108), as the launcher picks on one
            _ln.layer_norm_backward(torch.empty_like(y), x, w, mean, rstd, programs=4 * 108, tiles=tiles)

    return Case(f"layernorm N={n} {_SHORT[dtype]}{' bias' if bias else ''}", target, tiles, run, _ln)


def rmsnorm_case(target: Target, n: int, dtype: torch.dtype, backward: bool = True) -> Case:
    """RMSNorm forward (and backward) on B*T rows of `n`, weight in the input's dtype."""
    tiles = _rms.gpu_tiles(n)

    def run() -> None:
        x = torch.empty(B * T, n, device="meta", dtype=dtype)
        w = torch.empty(n, device="meta", dtype=dtype)
        y, rstd = _rms.rms_norm_forward(x, w, 1e-6, tiles=tiles)
        if backward:  # programs: 4 per SM of an A100 (108), as the launcher picks on one
            _rms.rms_norm_backward(torch.empty_like(y), x, w, rstd, programs=4 * 108, tiles=tiles)

    return Case(f"rmsnorm N={n} {_SHORT[dtype]}", target, tiles, run, _rms)


def rope_case(target: Target, head_dim: int, dtype: torch.dtype) -> Case:
    """RoPE on the queries and keys of a (B, T, 2 heads, D) projection view, as gpt/model.py rotates them; the
    backward is the same kernel turning the other way (a runtime sign), so one compile serves both."""
    tiles = _rope.gpu_tiles(head_dim)

    def run() -> None:
        heads = max(1, HEADS_WIDTH // head_dim)
        qkv = torch.empty(B, T, 3 * heads * head_dim, device="meta", dtype=dtype)
        qk = qkv[..., :2 * heads * head_dim].view(B, T, 2 * heads, head_dim)
        table = torch.empty(T, head_dim // 2, device="meta", dtype=torch.float32)
        _rope.rope_forward(qk, table, table, tiles=tiles)

    return Case(f"rope D={head_dim} {_SHORT[dtype]}", target, tiles, run, _rope)


def cross_entropy_case(target: Target, vocab: int, dtype: torch.dtype, linear: bool = False) -> Case:
    """Cross-entropy on B*T rows of `vocab` logits, or the fused linear one over 1024-token chunks."""
    tiles = _ce.gpu_tiles(vocab)

    def run() -> None:
        targets = torch.empty(B * T, device="meta", dtype=torch.int64)
        if linear:
            hidden = torch.empty(B * T, HEADS_WIDTH, device="meta", dtype=dtype)
            weight = torch.empty(vocab, HEADS_WIDTH, device="meta", dtype=dtype)
            _ce.linear_cross_entropy_forward(hidden, weight, targets, -1, 1024, tiles=tiles)
        else:
            # n_valid given: counting the targets on meta tensors would import torch._dynamo (~5 s)
            n_valid = torch.empty((), device="meta", dtype=torch.int64)
            _ce.cross_entropy_forward(torch.empty(B * T, vocab, device="meta", dtype=dtype), targets, -1,
                                      n_valid=n_valid, tiles=tiles)

    op = "linear cross-entropy" if linear else "cross-entropy"
    return Case(f"{op} V={vocab} {_SHORT[dtype]}", target, tiles, run, _ce)


# Row widths: two per tile of the LayerNorm GPU table, 3/4 of its BLOCK_N (GPT widths: 384, 768, ...,
# multiples of 16) and 8 more (not a multiple of 16: triton compiles the two apart). Vocabularies: each
# cross-entropy tile with one that is a multiple of 16 and one that is not: a character set, 1000,
# GPT-2's 50257 and its padded 50304.
def layernorm_widths() -> list[tuple[int, bool]]:
    """(width, whether the forward without bias is compiled too) for each tile of the GPU table."""
    widths = []
    for tiles in _ln.gpu_tile_table():
        widths += [(tiles.block_n * 3 // 4, True), (tiles.block_n * 3 // 4 + 8, False)]
    return widths


VOCABS = (65, 1008, 50257, 50304)


def full_matrix(targets: tuple[Target, ...]) -> list[Case]:
    """Every launch configuration the launchers can pick on these targets, over the problem axes."""
    cases: list[Case | None] = []
    for target in targets:
        for d, dtype, causal, dropout in itertools.product(gpu_support.ATTENTION_CHECKED_HEAD_DIMS,
                                                            gpu_support.ATTENTION_TRITON_DTYPES, (True, False),
                                                            (False, True)):
            cases.append(attention_case(target, d, dtype, causal, dropout))
        for d in gpu_support.ATTENTION_CHECKED_HEAD_DIMS:  # a prompt of any length: sampling's forward
            cases.append(attention_case(target, d, torch.bfloat16, True, False, t=T_RAGGED, backward=False))
        cases.append(dropout_mask_case(target))
        for (n, without_bias), dtype in itertools.product(layernorm_widths(), gpu_support.DTYPES):
            cases.append(layernorm_case(target, n, dtype, bias=True))
            if without_bias:  # the backward does not read the bias: only the forward differs
                cases.append(layernorm_case(target, n, dtype, bias=False, backward=False))
        for vocab, dtype in itertools.product(VOCABS, gpu_support.DTYPES):
            cases.append(cross_entropy_case(target, vocab, dtype))
            cases.append(cross_entropy_case(target, vocab, dtype, linear=True))
        for (n, _), dtype in itertools.product(layernorm_widths(), gpu_support.DTYPES):
            cases.append(rmsnorm_case(target, n, dtype))
        for d, dtype in itertools.product(gpu_support.ROPE_HEAD_DIMS, gpu_support.DTYPES):
            cases.append(rope_case(target, d, dtype))
    return [c for c in cases if c is not None]


SUBSET_TARGETS = ("sm_80", "sm_90")


def subset(targets: tuple[Target, ...]) -> list[Case]:
    """One configuration per kernel (the GPT-2 training step's: bf16, head dim 64, width 768, vocabulary
    50304; RMSNorm and RoPE at the recipe's shapes of that step), for each target: what `make test` compiles."""
    cases: list[Case | None] = []
    for target in targets:
        cases += [attention_case(target, 64, torch.bfloat16, True, False), dropout_mask_case(target),
                  layernorm_case(target, HEADS_WIDTH, torch.bfloat16, bias=True),
                  cross_entropy_case(target, 50304, torch.bfloat16), rmsnorm_case(target, HEADS_WIDTH, torch.bfloat16),
                  rope_case(target, 64, torch.bfloat16)]
    return [c for c in cases if c is not None]


def unique_jobs(cases: list[Case]) -> list[Job]:
    """The distinct compiles the cases need, in order (e.g. the backward's Delta kernel is shared by the
    causal and the full, with and without dropout, cases of one head dim and dtype)."""
    seen: dict[Job, Job] = {}
    for case in cases:
        for job in jobs_of(case):
            seen.setdefault(job, job)
    return list(seen)
