"""How `impl` picks an implementation (one vocabulary for every op), and the errors when Triton cannot run."""
from __future__ import annotations

import pytest
import torch

import kernels
from gpt.errors import GPTError
from kernels import reference


def test_available_reports_this_machine():
    assert kernels.available() == {"triton": True, "cuda": torch.cuda.is_available(), "interpreter": True}
    assert "interpreter" in kernels.describe()


def test_auto_runs_torchs_ops_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not launch a kernel on CPU")
    monkeypatch.setattr(kernels._fa, "flash_attention_triton", fail)
    monkeypatch.setattr(kernels._ln, "layer_norm_triton", fail)
    monkeypatch.setattr(kernels._ce, "cross_entropy_triton", fail)
    q = torch.randn(1, 2, 8, 16)
    torch.testing.assert_close(kernels.attention(q, q, q), reference.attention_torch(q, q, q))
    kernels.layer_norm(q, torch.ones(16), None)
    kernels.cross_entropy(q.view(16, 16), torch.zeros(16, dtype=torch.long))


@pytest.mark.parametrize("impl", ["torch", "math"])
def test_every_op_takes_torch_and_math_and_they_agree(impl):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 7, 8, dtype=torch.float64)
    x, w, b = torch.randn(5, 24, dtype=torch.float64), torch.randn(24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    logits, targets = torch.randn(6, 30), torch.tensor([1, -1, 5, 29, 0, -1])
    hidden, weight = torch.randn(6, 8), torch.randn(30, 8)
    torch.testing.assert_close(kernels.attention(q, k, v, impl=impl), reference.attention_math(q, k, v))
    torch.testing.assert_close(kernels.layer_norm(x, w, b, impl=impl), torch.nn.functional.layer_norm(x, (24,), w, b))
    want = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1)
    torch.testing.assert_close(kernels.cross_entropy(logits, targets, impl=impl), want)
    torch.testing.assert_close(kernels.fused_linear_cross_entropy(hidden, weight, targets, impl=impl),
                               torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-1))


def test_triton_without_gpu_or_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRETER", False)
    with pytest.raises(GPTError, match="need a CUDA GPU.*TRITON_INTERPRET=1.*impl='auto' or 'torch'"):
        kernels.layer_norm(torch.randn(2, 8), torch.ones(8), impl="triton")


def test_triton_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(kernels, "TRITON", False)
    with pytest.raises(GPTError, match="pip install triton"):
        kernels.cross_entropy(torch.randn(2, 8), torch.zeros(2, dtype=torch.long), impl="triton")


def test_unknown_impl_and_unsupported_shapes_are_clear_errors():
    q = torch.randn(1, 1, 4, 160)
    with pytest.raises(GPTError, match="impl='cuda' is not one of auto, triton, torch, math"):
        kernels.attention(q, q, q, impl="cuda")
    with pytest.raises(GPTError, match="head dims up to 128"):
        kernels.attention(q, q, q, impl="triton")
    with pytest.raises(GPTError, match="last dim from 1 to"):
        kernels.layer_norm(torch.randn(2, 70000), torch.ones(70000), impl="triton")


def test_kv_cache_steps_run_torchs_attention_whatever_the_impl(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels._fa, "flash_attention_triton", lambda *a, **k: calls.append(1))
    q, kv = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 5, 16)
    torch.testing.assert_close(kernels.attention(q, kv, kv, q_offset=4, impl="triton"),
                               reference.attention_torch(q, kv, kv, q_offset=4))
    assert not calls
    kernels.attention(kv, kv, kv, impl="triton")
    assert calls == [1]
