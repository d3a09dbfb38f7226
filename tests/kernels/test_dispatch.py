"""How `impl` picks an implementation, and the errors when Triton cannot run."""
from __future__ import annotations

import pytest
import torch

import kernels
from gpt.errors import GPTError
from kernels.reference import attention_sdpa


def test_available_reports_this_machine():
    assert kernels.available() == {"triton": True, "cuda": torch.cuda.is_available(), "interpreter": True}
    assert "interpreter" in kernels.describe()


def test_auto_uses_the_reference_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not launch a kernel on CPU")
    monkeypatch.setattr(kernels._fa, "flash_attention_triton", fail)
    monkeypatch.setattr(kernels._ln, "layer_norm_triton", fail)
    monkeypatch.setattr(kernels._ce, "cross_entropy_triton", fail)
    q = torch.randn(1, 2, 8, 16)
    torch.testing.assert_close(kernels.flash_attention(q, q, q), attention_sdpa(q, q, q))
    kernels.layer_norm(q, torch.ones(16), None)
    kernels.cross_entropy(q.view(16, 16), torch.zeros(16, dtype=torch.long))


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
    with pytest.raises(GPTError, match="impl='cuda' is not one of auto, triton, torch"):
        kernels.flash_attention(q, q, q, impl="cuda")
    with pytest.raises(GPTError, match="head dims up to 128"):
        kernels.flash_attention(q, q, q, impl="triton")
    with pytest.raises(GPTError, match="one shape"):
        kernels.flash_attention(q, q[:, :, :2], q[:, :, :2], impl="triton")


def test_model_attention_falls_back_to_the_reference_for_kv_cache_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels._fa, "flash_attention_triton", lambda *a, **k: calls.append(1))
    attend = kernels.attention_impl("triton")
    q, kv = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 5, 16)
    torch.testing.assert_close(attend(q, kv, kv, q_offset=4), attention_sdpa(q, kv, kv, q_offset=4))
    assert not calls
    attend(kv, kv, kv)
    assert calls == [1]
