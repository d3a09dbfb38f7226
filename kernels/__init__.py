"""The model's compute ops, chosen by name so the model never imports an implementation.

Every op is called the same way, `op(tensors..., impl=NAME)`, and every op knows the
same four names (kernels/runtime.py IMPLS):
  "auto"   our Triton kernel where it is known to run and fit (CUDA tensors, a shape the
           kernel takes), torch's op everywhere else;
  "triton" our kernel, or a GPTError saying why it cannot run here. On CPU the kernels
           run only through Triton's interpreter (TRITON_INTERPRET=1 set before this
           package is imported: slow, for tests);
  "torch"  torch's op (scaled_dot_product_attention, F.layer_norm, F.rms_norm, F.cross_entropy;
           rotate-half in tensor ops for rope);
  "math"   the formula written out (kernels/reference.py): the oracle, slow.
The choice is made per call from the tensors at hand, so the same model runs its
kernels on a GPU and torch's ops on a CPU without being told.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from gpt.errors import GPTError
from kernels import reference
from kernels.runtime import IMPLS, INTERPRETER, TRITON, available

if TRITON:  # the op modules, imported before the same-named functions below replace them as attributes
    from kernels import cross_entropy as _ce
    from kernels import flash_attention as _fa
    from kernels import layernorm as _ln
    from kernels import rmsnorm as _rms
    from kernels import rope as _rope
    from kernels.gpu_support import decide_for, decide_on

__all__ = ["IMPLS", "attention", "available", "cross_entropy", "describe", "describe_ops",
           "fused_linear_cross_entropy", "layer_norm", "resolve", "rms_norm", "rope"]


def describe() -> str:
    """One line for a run's first lines: what impl='auto' picks on this machine, and why."""
    a = available()
    if not a["triton"]:
        return "kernels: triton is not importable, every op runs torch's implementation"
    if a["interpreter"]:
        return "kernels: TRITON_INTERPRET=1: impl='triton' runs on CPU through the interpreter; 'auto' runs torch's ops"
    if a["cuda"]:
        return "kernels: auto = our Triton kernels on CUDA tensors of shapes they take, torch's ops elsewhere"
    return "kernels: no CUDA GPU, every op runs torch's implementation (impl='triton' would fail)"


def _auto_line(op: str, device: torch.device, dtype: torch.dtype, size: int) -> str:
    if device.type != "cuda":
        return f"{op}: torch (auto: our kernels run on CUDA GPUs; this is {device.type})"
    if not TRITON:
        return f"{op}: torch (auto: triton is not importable)"
    if INTERPRETER:
        return f"{op}: torch (auto: TRITON_INTERPRET=1 runs kernels on CPU tensors only)"
    return decide_on(op, device, dtype, size).line()


def describe_ops(device: torch.device, dtype: torch.dtype, asked: dict[str, str], sizes: dict[str, int]) -> list[str]:
    """One line per op for a run's first lines: the implementation it will run, and why.

    `asked` maps each op to its impl name; `sizes` to what picks its tiles (head dim, row width,
    vocabulary: see kernels/gpu_support.py). Ops asked for by name run that implementation.
    """
    return [_auto_line(op, torch.device(device), dtype, sizes[op]) if impl == "auto" else f"{op}: {impl} (asked)"
            for op, impl in asked.items()]


def _triton_runs_here(tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """Why our kernels cannot run on these tensors in this process, or None when they can."""
    if not TRITON:
        return ("impl='triton' needs the triton package (pip install triton, Linux with a CUDA GPU); "
                "use impl='auto' or 'torch' to run torch's op.")
    on_cuda = all(t.is_cuda for t in tensors)
    on_cpu = not any(t.is_cuda for t in tensors)
    if (INTERPRETER and on_cpu) or (on_cuda and not INTERPRETER):
        return None
    if INTERPRETER:
        return ("TRITON_INTERPRET=1 runs our kernels on CPU tensors only: move the tensors to the CPU, "
                "or unset TRITON_INTERPRET to run the kernels on the GPU.")
    device = tensors[0].device if tensors else "cpu"
    return (f"impl='triton' cannot run on {device} tensors: our kernels need a CUDA GPU, or Triton's "
            "interpreter on CPU (set TRITON_INTERPRET=1 before importing kernels; slow, for tests). "
            "Use impl='auto' or 'torch' (config: attention=torch, layernorm=torch, cross_entropy=torch).")


def resolve(impl: str, tensors: Sequence[torch.Tensor], kernel_problem: Callable[[], Optional[str]],
            gpu_op: Optional[tuple[str, int]] = None) -> str:
    """The implementation one call runs: 'triton', 'torch' or 'math'.

    `kernel_problem()` says why the kernel cannot take these inputs (None when it can):
    'auto' then runs torch's op, 'triton' raises it as the error. `gpu_op` is (op, size) for
    kernels/gpu_support.py: on a GPU 'auto' takes our kernel only where that op at that size
    is compile-checked for this GPU and its tiles fit the GPU's shared memory.
    """
    if impl not in IMPLS:
        raise GPTError(f"impl={impl!r} is not one of {', '.join(IMPLS)}.")
    if impl in ("torch", "math"):
        return impl
    if impl == "auto":
        auto_triton = TRITON and not INTERPRETER and all(t.is_cuda for t in tensors) and kernel_problem() is None
        if auto_triton and gpu_op is not None:
            auto_triton = decide_for(gpu_op[0], tensors[0], gpu_op[1]).use_triton
        return "triton" if auto_triton else "torch"
    problem = _triton_runs_here(tensors) or kernel_problem()
    if problem:
        raise GPTError(problem)
    return "triton"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, dropout_p: float = 0.0,
              scale: Optional[float] = None, q_offset: int = 0, impl: str = "auto") -> torch.Tensor:
    """Attention over q (B, H, Tq, D) and k, v (B, H, Tk, D); see kernels/flash_attention.py.

    Our kernel is self-attention over one sequence (Tq == Tk, q_offset 0). A KV-cache decode
    step (a few new queries against the cached keys) runs torch's op whatever `impl` says:
    it is a handful of queries, not worth a kernel.
    """
    if q_offset != 0 or q.shape != k.shape:
        impl = "math" if impl == "math" else "torch"
    chosen = resolve(impl, (q, k, v), lambda: _fa.input_problem(q, k, v, dropout_p), ("attention", q.size(-1)))
    if chosen == "triton":
        return _fa.flash_attention_triton(q, k, v, causal, dropout_p, scale)
    if chosen == "math":
        return reference.attention_math(q, k, v, causal, dropout_p, scale, q_offset)
    return reference.attention_torch(q, k, v, causal, dropout_p, scale, q_offset)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               impl: str = "auto") -> torch.Tensor:
    """LayerNorm over x's last dim (bias may be None); see kernels/layernorm.py."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    chosen = resolve(impl, tensors, lambda: _ln.input_problem(x, weight, bias), ("layernorm", x.size(-1)))
    if chosen == "triton":
        return _ln.layer_norm_triton(x, weight, bias, eps)
    if chosen == "math":
        return reference.layer_norm_math(x, weight, bias, eps)
    return reference.layer_norm_torch(x, weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, impl: str = "auto") -> torch.Tensor:
    """RMSNorm over x's last dim, scaled by weight; see kernels/rmsnorm.py."""
    chosen = resolve(impl, (x, weight), lambda: _rms.input_problem(x, weight), ("rmsnorm", x.size(-1)))
    if chosen == "triton":
        return _rms.rms_norm_triton(x, weight, eps)
    if chosen == "math":
        return reference.rms_norm_math(x, weight, eps)
    return reference.rms_norm_torch(x, weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Rotary embedding of x (B, T, H, D) at the positions whose (T, D/2) fp32 cos/sin tables are given.

    The tables say the positions, so any absolute positions work (gpt/model.py `rope_tables` makes
    them); see kernels/rope.py for the math.
    """
    chosen = resolve(impl, (x, cos, sin), lambda: _rope.input_problem(x, cos, sin), ("rope", x.size(-1)))
    if chosen == "triton":
        return _rope.rope_triton(x, cos, sin)
    if chosen == "math":
        return reference.rope_math(x, cos, sin)
    return reference.rope_torch(x, cos, sin)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1,
                  impl: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...), skipping ignore_index; fp32 scalar."""
    chosen = resolve(impl, (logits, targets), lambda: _ce.input_problem(logits, targets),
                     ("cross_entropy", logits.size(-1)))
    if chosen == "triton":
        return _ce.cross_entropy_triton(logits, targets, ignore_index)
    if chosen == "math":
        return reference.cross_entropy_math(logits, targets, ignore_index)
    return reference.cross_entropy_torch(logits, targets, ignore_index)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -1, chunk: int = 1024, impl: str = "auto") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) without the full logits, `chunk` tokens at a time (Triton)."""
    chosen = resolve(impl, (hidden, weight, targets),
                     lambda: _ce.linear_input_problem(hidden, weight, targets, chunk),
                     ("linear_cross_entropy", weight.size(0)))
    if chosen == "triton":
        return _ce.linear_cross_entropy_triton(hidden, weight, targets, ignore_index, chunk)
    if chosen == "math":
        return reference.linear_cross_entropy_math(hidden, weight, targets, ignore_index)
    return reference.linear_cross_entropy_torch(hidden, weight, targets, ignore_index)
