"""Datasets users already have: llm.c / modded-nanogpt shards, nanoGPT's train.bin/val.bin; header errors."""
import os
import pickle

import numpy as np
import pytest

from data.dataset import open_dataset
from data.loader import BatchLoader
from data.shards import HEADER_BYTES, LLMC_MAGIC, MAGIC, open_shard, read_header, write_shard
from gpt.config import load_config
from gpt.errors import GPTError


def llmc_shard(path, tokens, magic=LLMC_MAGIC, version=1):
    """An llm.c shard, written the way llm.c's fineweb.py writes one."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def test_llmc_folder_is_read_as_gpt2_tokens(tmp_path):
    root = tmp_path / "fineweb10B"
    root.mkdir()
    train = (np.arange(3000) * 17) % 50257
    llmc_shard(root / "fineweb_val_000000.bin", np.arange(500) % 50257)
    llmc_shard(root / "fineweb_train_000001.bin", train[:2000])
    llmc_shard(root / "fineweb_train_000002.bin", train[2000:])
    ds = open_dataset(tmp_path, "fineweb10B")
    assert ds.format == "llmc" and ds.vocab_size == 50257 and ds.meta["tokenizer"]["kind"] == "gpt2"
    assert ds.sizes == {"train": [2000, 1000], "val": [500]}
    x, y = BatchLoader(ds, 64, 8, 1, seed=0, sampling="sequential").next_batch()
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        start = int(np.flatnonzero(train == row_x[0])[0])  # 17 is prime to 50257: the ids are distinct
        assert (train[start:start + 64] == row_x).all() and (train[start + 1:start + 65] == row_y).all()


def test_nanogpt_char_dataset_with_meta_pkl(tmp_path):
    root = tmp_path / "shakespeare_char"
    root.mkdir()
    chars = sorted(set("hello world, to be or not to be\n"))
    text = "to be or not to be, hello world\n" * 40
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    ids[:1000].tofile(root / "train.bin")
    ids[1000:].tofile(root / "val.bin")
    with open(root / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    ds = open_dataset(tmp_path, "shakespeare_char")
    assert ds.format == "nanogpt" and ds.vocab_size == len(chars)
    assert ds.sizes == {"train": [1000], "val": [len(text) - 1000]}
    x, _ = BatchLoader(ds, 32, 4, 1, seed=0).next_batch()
    assert all(ds.tokenizer.decode(row.tolist()) in text for row in x)
    assert ds.tokenizer.encode("hello") == [chars.index(c) for c in "hello"]


def test_nanogpt_without_meta_pkl_is_gpt2(tmp_path):
    root = tmp_path / "openwebtext"
    root.mkdir()
    np.arange(400, dtype=np.uint16).tofile(root / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(root / "val.bin")
    ds = open_dataset(tmp_path, "openwebtext")
    assert ds.format == "nanogpt" and ds.meta["tokenizer"]["kind"] == "gpt2"
    assert ds.sizes == {"train": [400], "val": [100]}


def test_a_meta_pkl_that_runs_code_is_refused_unrun(tmp_path):
    root = tmp_path / "evil"
    root.mkdir()
    np.arange(400, dtype=np.uint16).tofile(root / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(root / "val.bin")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    (root / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "itos": Exploit()}))
    with pytest.raises(GPTError, match=r"meta\.pkl is not a nanoGPT character meta\.pkl.*refers to \w+\.system"):
        open_dataset(tmp_path, "evil")
    assert not marker.exists()


def test_odd_sized_nanogpt_bin_is_named(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "train.bin").write_bytes(b"\x01\x00\x02")
    (root / "val.bin").write_bytes(b"\x01\x00")
    with pytest.raises(GPTError, match=r"train.bin has 3 bytes, an odd number"):
        open_dataset(tmp_path, "odd")


def test_forced_format_that_does_not_fit_is_explained(tmp_path):
    root = tmp_path / "x"
    root.mkdir()
    llmc_shard(root / "x_train_000000.bin", [1, 2, 3])
    with pytest.raises(GPTError, match=r"train.bin does not exist"):
        open_dataset(tmp_path, "x", data_format="nanogpt")
    with pytest.raises(GPTError, match=r"none for the val split"):
        open_dataset(tmp_path, "x", data_format="llmc")
    with pytest.raises(GPTError, match=r"--data_format='parquet' is not one of"):
        load_config(["--data_format=parquet"])


@pytest.mark.parametrize("magic, version, words", [
    (LLMC_MAGIC, 2, "llm.c shard of version 2"),
    (MAGIC, 7, "format version 7"),
    (12345, 1, "not a token shard (magic 12345"),
])
def test_corrupt_header_names_the_file_and_the_problem(tmp_path, magic, version, words):
    path = tmp_path / "fineweb_train_000003.bin"
    llmc_shard(path, [1, 2, 3], magic=magic, version=version)
    with pytest.raises(GPTError) as err:
        read_header(path)
    assert words in str(err.value) and "fineweb_train_000003.bin" in str(err.value)


def test_header_count_that_disagrees_with_the_file_size_is_named(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(50) % 7, vocab_size=7)
    with open(path, "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(GPTError, match=r"train_000000.bin is truncated or corrupt: its header promises 50 tokens"):
        open_shard(path)
    assert HEADER_BYTES == 1024


def test_our_shards_without_meta_json_ask_for_it(tmp_path):
    root = tmp_path / "half"
    root.mkdir()
    write_shard(root / "train_000000.bin", np.arange(10), vocab_size=10)
    with pytest.raises(GPTError, match=r"half/meta.json does not exist"):
        open_dataset(tmp_path, "half")
