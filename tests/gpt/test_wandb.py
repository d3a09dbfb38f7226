"""W&B without an account: offline runs under out_dir/wandb with the logged history, the no-login fallback, resume.

The history is read back from the offline run's .wandb file, with no network: W&B writes it in
LevelDB's log format (32 KiB blocks of records with a 7-byte header: crc32c, length, type),
after a 7-byte ":W&B" file header, each record one protobuf `Record`.
"""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.checkpoint import load_checkpoint
from tests.conftest import REPO, run_script, script_env, tiny_argv

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """Every protobuf Record in a .wandb file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def offline_runs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "wandb").glob("offline-run-*"))


def history(run_dir: Path) -> list[dict]:
    (wandb_file,) = run_dir.glob("run-*.wandb")
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(wandb_file) if r.WhichOneof("record_type") == "history"]


def config(run_dir: Path) -> dict:
    (wandb_file,) = run_dir.glob("run-*.wandb")
    values = {}
    for r in wandb_records(wandb_file):
        if r.WhichOneof("record_type") in ("run", "config"):
            items = r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update
            values.update({item.key: json.loads(item.value_json) for item in items})
    return values


def train(tiny_data, out_dir, **overrides):
    result = run_script("launch/train.py", *tiny_argv(tiny_data, out_dir, wandb_log=True, **overrides))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_without_a_key_a_run_falls_back_to_offline_once_holds_every_line_and_resume_keeps_its_id(
        tiny_data, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings: nobody logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    out = tmp_path / "run"
    result = train(tiny_data, out, max_iters=20, eval_interval=10, lr_decay_iters=30)
    notices = [line for line in result.stdout.splitlines() if "no API key and no WANDB_MODE" in line]
    assert len(notices) == 1 and "offline" in notices[0] and "wandb sync" in notices[0]
    (run_dir,) = offline_runs(out)
    rows = history(run_dir)
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "eval/val_loss" in r]
    assert [r["iter"] for r in train_rows] == list(range(20))
    assert [r["iter"] for r in eval_rows] == [0, 10, 20]
    assert {"train/lr", "train/dt_ms", "train/tokens_per_s", "train/mfu", "train/mem_mib"} <= set(train_rows[0])
    assert "eval/train_loss" in eval_rows[0]
    logged = [r["train/loss"] for r in train_rows]
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [r["loss"] for r in jsonl if r["kind"] == "train"]
    cfg = config(run_dir)
    assert cfg["n_layer"] == 2 and cfg["max_iters"] == 20 and cfg["wandb_log"] is True
    run_id = run_dir.name.rsplit("-", 1)[1]
    assert load_checkpoint(out)["wandb_id"] == run_id

    monkeypatch.setenv("WANDB_MODE", "offline")  # asked for by name this time: no notice
    resumed = train(tiny_data, out, max_iters=30, eval_interval=10, lr_decay_iters=30, init_from="resume")
    assert "no API key and no WANDB_MODE" not in resumed.stdout
    runs = offline_runs(out)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # `wandb sync` joins them in order
    resumed = [r["iter"] for r in history(runs[-1]) if "train/loss" in r]
    assert resumed == list(range(20, 30))


def test_without_wandb_log_wandb_is_never_imported(tiny_data, tmp_path):
    code = ("import sys; from gpt.build import build_run; from gpt.config import load_config; from gpt.trainer import Trainer; "
            "Trainer(build_run(load_config(sys.argv[1:]))).run(); assert 'wandb' not in sys.modules, 'wandb was imported'")
    args = tiny_argv(tiny_data, tmp_path, max_iters=2, eval_interval=2, lr_decay_iters=4)
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=script_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "wandb").exists()
