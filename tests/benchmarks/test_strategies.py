"""The memory table: its formulas add up to the ZeRO paper's 16 bytes per parameter, and it prints for every size."""
import pytest

from benchmarks.strategies import gpt2_shape, main, per_rank
from gpt.errors import GPTError


def test_sharding_divides_the_16_bytes_per_parameter_that_ddp_keeps_whole():
    shape = gpt2_shape("124M", 1024, 50257)
    assert shape.params == 124_439_808  # nanoGPT prints 123.65M: the same without the 786,432 position embeddings
    state = lambda strategy, world: sum(v for k, v in per_rank(strategy, shape, world).items() if k != "computing")
    assert state("single", 1) == 16 * shape.params
    assert state("fsdp", 8) == state("ZeRO-3", 8) == 16 * shape.params / 8
    assert state("ZeRO-1", 8) > state("ZeRO-2", 8) > state("ZeRO-3", 8)


def test_the_table_has_a_row_per_size_world_and_strategy(capsys):
    main(["--models=124M,1.5B", "--ranks=8,64"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1")]
    assert len(rows) == 2 * (1 + 2 * 5)  # single once per size, the five others per world size
    with pytest.raises(GPTError, match="unknown model size"):
        main(["--models=7B"])
