"""The shipped configs load, and the GPT-2 ones are the models and recipes they say they are."""
import pytest

from gpt.config import REPO_ROOT, load_config
from gpt.model import GPT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    load_config([str(path)])


# transformers' counts for OpenAI's gpt2 and gpt2-medium (vocab 50257), plus the 47 padding rows of 50304
@pytest.mark.parametrize("name, params", [("gpt2_124m", 124_439_808 + 47 * 768), ("gpt2_350m", 354_823_168 + 47 * 1024)])
def test_gpt2_configs_build_gpt2s_shape(name, params):
    cfg = load_config([str(REPO_ROOT / "configs" / f"{name}.yaml")])
    o = cfg.optim
    assert (cfg.model.block_size, cfg.model.vocab_size, cfg.model.bias) == (1024, 50304, True)
    assert cfg.train.tokens_per_step == 524288 and (cfg.train.dtype, cfg.train.compile) == ("bfloat16", True)
    assert (o.beta1, o.beta2, o.weight_decay, o.warmup_iters) == (0.9, 0.95, 0.1, 700)
    assert o.min_lr == pytest.approx(o.learning_rate / 10)
    assert cfg.train.max_iters == cfg.optim.lr_decay_iters == 10_000_000_000 // 524288  # 10B tokens
    with torch_meta():
        model = GPT(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == params


def test_the_finetune_follows_nanogpts_recipe():
    cfg = load_config([str(REPO_ROOT / "configs" / "finetune_shakespeare.yaml")])
    t = cfg.train
    assert (t.init_from, cfg.data.dataset, cfg.data.batch_size, t.gradient_accumulation_steps, t.max_iters) == \
        ("gpt2-xl", "shakespeare", 1, 32, 20)
    assert (cfg.optim.learning_rate, cfg.optim.decay_lr) == (3e-5, False)


def torch_meta():
    """Build on the meta device: shapes only, no memory or init time for 355M parameters."""
    import torch
    return torch.device("meta")
