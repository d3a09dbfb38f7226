"""The model's compute ops, chosen by name so the model never imports an implementation.

Each op has a Triton kernel (kernels/flash_attention.py, layernorm.py, cross_entropy.py)
and a plain-torch reference (kernels/reference.py). `impl` picks one:
  "auto"   Triton for CUDA tensors when triton imports, the reference otherwise
           (also for inputs a kernel does not take, e.g. head dims above 128);
  "triton" our kernel, or a GPTError saying why it cannot run here. On CPU the
           kernels run only through Triton's interpreter (TRITON_INTERPRET=1 set
           before this package is imported: slow, for tests);
  "torch"  the reference.
`available()` says what this process has: triton importable, a CUDA GPU, the interpreter.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from gpt.errors import GPTError
from kernels import reference
from kernels.reference import attention_math, attention_sdpa
from kernels.runtime import INTERPRETER, TRITON, available

IMPLS = ("auto", "triton", "torch")

if TRITON:  # the op modules, imported before the same-named functions below replace them as attributes
    from kernels import cross_entropy as _ce
    from kernels import flash_attention as _fa
    from kernels import layernorm as _ln


def describe() -> str:
    """One line for logs: which implementation impl='auto' picks here, and why."""
    a = available()
    if not a["triton"]:
        return "kernels: triton is not importable, every op uses its torch reference"
    if a["interpreter"]:
        return "kernels: TRITON_INTERPRET=1: impl='triton' runs on CPU through the interpreter; 'auto' uses torch"
    if a["cuda"]:
        return "kernels: Triton on CUDA tensors, torch references elsewhere"
    return "kernels: no CUDA GPU, every op uses its torch reference (impl='triton' would fail)"


def use_triton(impl: str, *tensors: torch.Tensor) -> bool:
    """Whether `impl` means our kernel for these tensors; raises GPTError when 'triton' cannot run here."""
    if impl not in IMPLS:
        raise GPTError(f"impl={impl!r} is not one of {', '.join(IMPLS)}.")
    if impl == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "auto":
        return TRITON and on_cuda and not INTERPRETER
    if not TRITON:
        raise GPTError("impl='triton' needs the triton package (pip install triton, Linux with a CUDA GPU); "
                       "use impl='auto' or 'torch' to run the torch reference.")
    on_cpu = not any(t.is_cuda for t in tensors)
    if (INTERPRETER and on_cpu) or (on_cuda and not INTERPRETER):
        return True
    if INTERPRETER:
        raise GPTError("TRITON_INTERPRET=1 runs our kernels on CPU tensors only: move the tensors to the CPU, "
                       "or unset TRITON_INTERPRET to run the kernels on the GPU.")
    device = tensors[0].device if tensors else "cpu"
    raise GPTError(f"impl='triton' cannot run on {device} tensors: our kernels need a CUDA GPU, or Triton's "
                   "interpreter on CPU (set TRITON_INTERPRET=1 before importing kernels; slow, for tests). "
                   "Use impl='auto' or 'torch' (config: attention=sdpa, layernorm=torch, cross_entropy=torch).")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    dropout_p: float = 0.0, scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """Causal (or full) attention over q, k, v of shape (B, H, T, D); see kernels/flash_attention.py."""
    if use_triton(impl, q, k, v) and (impl == "triton" or _fa.input_problem(q, k, v, dropout_p) is None):
        return _fa.flash_attention_triton(q, k, v, causal, dropout_p, scale)
    return attention_sdpa(q, k, v, causal, dropout_p, scale)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               impl: str = "auto") -> torch.Tensor:
    """LayerNorm over x's last dim (bias may be None); see kernels/layernorm.py."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if use_triton(impl, *tensors) and (impl == "triton" or 1 <= x.size(-1) <= _ln.MAX_N):
        return _ln.layer_norm_triton(x, weight, bias, eps)
    return reference.layer_norm(x, weight, bias, eps)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1,
                  impl: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...), skipping ignore_index; fp32 scalar."""
    if use_triton(impl, logits, targets):
        return _ce.cross_entropy_triton(logits, targets, ignore_index)
    return reference.cross_entropy(logits, targets, ignore_index)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -1, chunk: int = 1024, impl: str = "auto") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) without the full logits, `chunk` tokens at a time (Triton)."""
    if use_triton(impl, hidden, weight, targets):
        return _ce.linear_cross_entropy_triton(hidden, weight, targets, ignore_index, chunk)
    return reference.linear_cross_entropy(hidden, weight, targets, ignore_index)


def _attend(impl: str) -> Callable[..., torch.Tensor]:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, dropout_p: float = 0.0,
               scale: Optional[float] = None, q_offset: int = 0) -> torch.Tensor:
        # KV-cache decoding (q_offset > 0, fewer queries than keys) takes the reference: our kernel is
        # self-attention over one sequence, and a decode step is a few queries, not worth a kernel.
        if q_offset != 0 or q.shape != k.shape:
            return attention_sdpa(q, k, v, causal, dropout_p, scale, q_offset)
        return flash_attention(q, k, v, causal, dropout_p, scale, impl=impl)
    return attend


ATTENTION_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "auto": _attend("auto"), "triton": _attend("triton"), "sdpa": attention_sdpa, "math": attention_math,
}


def attention_impl(name: str) -> Callable[..., torch.Tensor]:
    """The attention function for a config's `attention` key: auto = our kernel on CUDA, sdpa elsewhere."""
    return ATTENTION_IMPLS[name]
