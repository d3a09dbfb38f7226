"""The kernel benchmark's harness runs on CPU through the interpreter, ending with its table."""
from __future__ import annotations

import pytest

from gpt.errors import GPTError
from benchmarks import kernels as bench


def test_bench_runs_tiny_under_the_interpreter_and_prints_the_table_last(capsys):
    bench.main(["--ops=layernorm,cross_entropy", "--iters=1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-7].startswith("| op | impl |")
    assert [line.split("|")[2].strip() for line in out[-3:]] == ["triton", "torch F.cross_entropy",
                                                                   "torch, fp32 upcast"]


def test_bench_rejects_unknown_ops_and_bf16_in_the_interpreter():
    with pytest.raises(GPTError, match="unknown op"):
        bench.main(["--ops=softmax"])
    with pytest.raises(GPTError, match="bf16"):
        bench.main(["--dtype=bfloat16"])
