"""--tokens_per_step: the accumulation follows from the tokens wanted per step, for any number of ranks."""
import pytest

from gpt.build import _accumulation_for, build_run
from gpt.config import REPO_ROOT, load_config
from gpt.distributed import DistEnv
from gpt.errors import GPTError
from tests.conftest import tiny_argv

GPT2 = str(REPO_ROOT / "configs" / "gpt2_124m.yaml")


@pytest.mark.parametrize("world, accumulation, tokens", [
    (1, 16, 524288), (2, 16, 524288), (8, 16, 524288), (16, 16, 524288),
    (3, 15, 491520),  # 16 micro-batches do not split over 3 ranks: the nearest that does, and it says so
])
def test_gpt2_124m_takes_half_a_million_tokens_per_step_on_any_world_size(world, accumulation, tokens, capsys):
    cfg = load_config([GPT2])
    assert _accumulation_for(cfg, DistEnv(world_size=world), verbose=True) == accumulation
    assert accumulation * cfg.data.batch_size * cfg.model.block_size == tokens
    printed = capsys.readouterr().out
    assert f"gradient_accumulation_steps={accumulation}" in printed and f"{tokens:,} tokens per step" in printed
    assert ("nearest to 524,288" in printed) == (tokens != 524288)


def test_a_step_smaller_than_one_micro_batch_per_rank_is_explained():
    cfg = load_config([GPT2])
    with pytest.raises(GPTError, match=r"cannot be met: .* 32 rank\(s\) is already 1,048,576 tokens.*--batch_size to 16"):
        _accumulation_for(cfg, DistEnv(world_size=32), verbose=False)


def test_a_run_uses_the_derived_accumulation(tiny_data, tmp_path):
    run = build_run(load_config(tiny_argv(tiny_data, tmp_path, tokens_per_step=256, gradient_accumulation_steps=1)))
    assert run.cfg.train.gradient_accumulation_steps == 4 and run.tokens_per_iter == 256  # 4 x 4 sequences x 16
    run.loader.close()
