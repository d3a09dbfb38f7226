"""Kernel tests run on CPU through Triton's interpreter (tests/conftest.py turns it on without CUDA)."""
from __future__ import annotations

import pytest

import kernels
from tests.kernels.checks import poison_allocations


@pytest.fixture(autouse=True)
def needs_interpreter():
    if not kernels.TRITON:
        pytest.skip("triton is not importable")
    if not kernels.INTERPRETER:
        pytest.skip("these tests run the kernels on CPU under TRITON_INTERPRET=1; tests/gpu covers CUDA")


@pytest.fixture
def poison(monkeypatch):
    poison_allocations(monkeypatch)
