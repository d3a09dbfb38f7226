"""Where Hugging Face snapshots of GPT-2 are on this machine: found on disk, never downloaded.

A source is one of OpenAI's four GPT-2 models by name (gpt2, gpt2-medium, gpt2-large,
gpt2-xl, published on the Hub as openai-community/<name>), looked up in the local Hugging
Face cache, or a folder given by its path. The cache is the one the `hf` CLI and
transformers fill: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, with
each repository in `models--<org>--<name>/snapshots/<revision>/` and `refs/main` naming the
revision. Nothing here imports torch or touches the network, so data/ uses it too (GPT-2's
tokenizer files) and a missing snapshot costs one error naming where it looked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from gpt.errors import GPTError

# our name -> the Hub repository; "gpt2" was also a repository of its own before the openai-community org
GPT2_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def hub_cache() -> Path:
    """The Hugging Face cache folder, resolved from the environment as huggingface_hub does."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _repo_folders(name: str) -> list[Path]:
    """The cache folders that may hold model `name`: its openai-community repository, then the old bare one."""
    cache = hub_cache()
    return [cache / f"models--{GPT2_MODELS[name].replace('/', '--')}", cache / f"models--{name}"]


def _snapshots(repo: Path) -> list[Path]:
    """A cached repository's snapshot folders: the one refs/main names first, then the newest first."""
    root = repo / "snapshots"
    if not root.is_dir():
        return []
    found = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    main = repo / "refs" / "main"
    if main.is_file():
        named = root / main.read_text().strip()
        found = [named] + [p for p in found if p != named] if named.is_dir() else found
    return found


def weights_file(folder: Path) -> Optional[Path]:
    """The folder's weights, in order of preference: safetensors (one file or an index of shards), then torch."""
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def download_hint(name: str, files: str = "config.json model.safetensors vocab.json merges.txt") -> str:
    return (f"On a machine with internet, `HF_HOME=DIR hf download {GPT2_MODELS[name]} {files}` puts it in "
            f"DIR/hub; copy DIR here and set HF_HOME=DIR")


def find_model(source: str) -> Path:
    """The folder holding the model `source` names (config.json and weights), or a GPTError saying where it looked."""
    if source in GPT2_MODELS:
        repos = _repo_folders(source)
        for repo in repos:
            for snap in _snapshots(repo):
                if (snap / "config.json").is_file() and weights_file(snap):
                    return snap
        raise GPTError(
            f"--init_from={source}: OpenAI's {source} weights are not on this machine. Looked in the Hugging Face "
            f"cache for {' and '.join(str(r) for r in repos)} (the cache is $HF_HUB_CACHE, else $HF_HOME/hub, else "
            f"~/.cache/huggingface/hub); nothing is downloaded by this program. {download_hint(source)}. Or pass "
            "--init_from=PATH, a folder with config.json and model.safetensors (or pytorch_model.bin).")
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise GPTError(f"--init_from={source!r} is neither a model name ({', '.join(GPT2_MODELS)}) nor a folder.")
    if not (folder / "config.json").is_file() or weights_file(folder) is None:
        have = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise GPTError(f"--init_from={source}: the folder needs config.json and one of {', '.join(WEIGHT_FILES)} "
                       f"(a Hugging Face GPT-2 snapshot, or launch/export_checkpoint.py --format=hf); it holds {have}.")
    return folder


def find_gpt2_tokenizer() -> tuple[Optional[Path], list[Path]]:
    """A cached GPT-2 snapshot with vocab.json and merges.txt (any of the four sizes: they share the tokenizer),
    or None; and the repository folders looked in, for the error when there is none."""
    looked = []
    for name in GPT2_MODELS:
        for repo in _repo_folders(name):
            looked.append(repo)
            for snap in _snapshots(repo):
                if all((snap / f).is_file() for f in TOKENIZER_FILES):
                    return snap, looked
    return None, looked
