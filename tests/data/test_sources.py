"""Streaming the corpus: .txt/.jsonl/.parquet, gzip, blocks cut safely, identical shards on every run."""
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.dataset import open_dataset
from data.prepare import PrepareConfig, prepare
from data.shards import open_shard
from data.sources import Corpus, input_files
from gpt.errors import GPTError


def all_text(root, name):
    ds = open_dataset(root, name)
    return "".join(ds.tokenizer.decode(open_shard(p)) for split in ("train", "val") for p in ds.shards[split])


def test_mixed_folder_of_txt_jsonl_gz_and_parquet(tmp_path):
    src = tmp_path / "corpus"
    (src / "b").mkdir(parents=True)
    (src / "a.txt").write_text("plain text\r\nwith windows newlines\n", encoding="utf-8")
    with gzip.open(src / "b" / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "json one", "id": 1}) + "\n\n" + json.dumps({"text": "json two"}) + "\n")
    pq.write_table(pa.table({"text": ["row one", None, "row two"], "n": [1, 2, 3]}), src / "b" / "d.parquet")
    (src / "notes.md").write_text("ignored")
    prepare(PrepareConfig(dataset="m", input=str(src), data_dir=str(tmp_path)))
    assert all_text(tmp_path, "m") == "\n".join(
        ["plain text\nwith windows newlines\n", "json one", "json two", "row one", "row two"])


def test_blocks_never_cut_a_character(tmp_path):
    text = "床前明月光" * 50 + "\n" + "é" * 301 + "\r\n" + "x\r" * 5
    path = tmp_path / "long.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces = list(Corpus([path], block_bytes=7).pieces())
    assert len(pieces) > 50 and all(not p.new_doc for p in pieces)
    assert "".join(p.text for p in pieces) == text.replace("\r\n", "\n").replace("\r", "\n")


def test_bad_jsonl_line_and_missing_parquet_column_are_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    with pytest.raises(GPTError, match=r"bad.jsonl, line 2: expected a JSON object with a 'text' string.*--text_key"):
        list(Corpus(input_files(str(tmp_path / "bad.jsonl"))).pieces())
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(GPTError, match=r"t.parquet has no column 'text' \(its columns: content\)"):
        list(Corpus(input_files(str(tmp_path / "t.parquet"))).pieces())
    assert [p.text for p in Corpus(input_files(str(tmp_path / "t.parquet")), text_key="content").pieces()] == ["a"]


def test_shards_are_identical_across_reruns_and_worker_counts(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "δέλτα", "石", "\n"])
    for i in range(3):  # ~3 MB: several work groups, so the workers really share the job
        (src / f"{i}.txt").write_text(" ".join(rng.choice(words, 180_000)), encoding="utf-8")
    outputs = []
    for run, workers in enumerate((1, 2, 2)):
        root = tmp_path / f"out{run}"
        prepare(PrepareConfig(dataset="d", input=str(src), data_dir=str(root), workers=workers,
                              shard_tokens=700_000))
        outputs.append({p.name: p.read_bytes() for p in sorted((root / "d").iterdir())})
    assert len(outputs[0]) > 3 and outputs[0] == outputs[1] == outputs[2]
