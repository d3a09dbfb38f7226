"""Preparing datasets: the Shakespeare conversion, any text file or folder, round trips, shard errors."""
import json

import numpy as np
import pytest

from data.dataset import open_dataset
from data.prepare import PrepareConfig, prepare
from data.shakespeare import markdown_to_classic
from data.shards import HEADER_BYTES, LLMC_MAGIC, open_shard, write_shard
from data.tokenizer import CharTokenizer
from gpt.errors import GPTError

PLAY = """# Romeo and Juliet

## ACT I

### SCENE I. Verona. A public place.

_Enter SAMPSON and GREGORY, of the house of Capulet, armed with swords and
bucklers_

**SAMPSON**  
Gregory, o' my word, we'll not carry coals.

**GREGORY**  
No, for then we should be colliers.  
_\\[Aside]_  
Ay, while you live\\--draw.

*Exeunt.*

**Chorus**  
_Exit_
"""


def test_markdown_play_becomes_classic_speeches():
    assert markdown_to_classic(PLAY) == (
        "SAMPSON:\nGregory, o' my word, we'll not carry coals.\n\n"
        "GREGORY:\nNo, for then we should be colliers.\nAy, while you live--draw."
    )


def test_shakespeare_corpus_is_the_38_plays_in_classic_form(shakespeare_data):
    ds = open_dataset(shakespeare_data, "shakespeare_char")
    train, val = ds.meta["tokens"]["train"], ds.meta["tokens"]["val"]
    assert 4_500_000 < train + val < 5_000_000
    assert abs(val / (train + val) - 0.1) < 1e-3
    text = ds.tokenizer.decode(open_shard(ds.shards["train"][0])[:20000])
    assert "\nROMEO:\n" in ds.tokenizer.decode(open_shard(ds.shards["train"][0])) + ds.tokenizer.decode(open_shard(ds.shards["val"][0]))
    assert "#" not in text and "_" not in text and "**" not in text


@pytest.mark.parametrize("text", ["Hello, world!\nTo be or not to be.\n" * 20, "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n" * 20])
def test_prepare_round_trips_text(tmp_path, text):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    prepare(PrepareConfig(dataset="t", input=str(src), data_dir=str(tmp_path)))
    ds = open_dataset(tmp_path, "t")
    decoded = "".join(ds.tokenizer.decode(open_shard(p)) for split in ("train", "val") for p in ds.shards[split])
    assert decoded == text
    assert ds.vocab_size == len(set(text))
    assert json.loads((tmp_path / "t" / "meta.json").read_text(encoding="utf-8"))["tokenizer"]["kind"] == "char"


def test_prepare_reads_a_folder_of_txt_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first file\n" * 10)
    (folder / "sub" / "b.txt").write_text("second file\n" * 10)
    (folder / "skip.md").write_text("ignored ~~~")
    prepare(PrepareConfig(dataset="f", input=str(folder), data_dir=str(tmp_path / "d")))
    ds = open_dataset(tmp_path / "d", "f")
    assert "~" not in ds.tokenizer.chars and "s" in ds.tokenizer.chars


def test_shards_split_at_shard_tokens(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("abcdefghij" * 100)
    prepare(PrepareConfig(dataset="s", input=str(src), data_dir=str(tmp_path), shard_tokens=300))
    ds = open_dataset(tmp_path, "s")
    assert ds.sizes["train"] == [300, 300, 300] and ds.sizes["val"] == [100]


def test_encoding_unknown_characters_names_them():
    with pytest.raises(GPTError, match=r"'Z'.*'é'|'é'.*'Z'"):
        CharTokenizer("abc").encode("abZé")


@pytest.mark.parametrize("cfg, words", [
    (PrepareConfig(dataset="x", input="/no/such/file.txt"), ["does not exist"]),
    (PrepareConfig(dataset="x"), ["--input"]),
])
def test_prepare_errors(tmp_path, cfg, words):
    cfg.data_dir = str(tmp_path)
    with pytest.raises(GPTError) as err:
        prepare(cfg)
    for word in words:
        assert word in str(err.value)


def test_non_utf8_input_is_explained(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café".encode("latin-1"))
    with pytest.raises(GPTError, match="not UTF-8"):
        prepare(PrepareConfig(dataset="x", input=str(src), data_dir=str(tmp_path)))


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(GPTError, match=r"python data/prepare.py --dataset=shakespeare_char"):
        open_dataset(tmp_path, "shakespeare_char")


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(100) % 7, vocab_size=7)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(GPTError, match=r"train_000000.bin is truncated or corrupt"):
        open_shard(path)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(GPTError, match=r"train_000000.bin is truncated"):
        open_shard(path)


def test_foreign_file_is_not_a_shard(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x07" * (HEADER_BYTES + 8))
    with pytest.raises(GPTError, match="x.bin is not a token shard"):
        open_shard(path)


def test_llmc_shards_are_read(tmp_path):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (LLMC_MAGIC, 1, 5)
    path = tmp_path / "llmc.bin"
    path.write_bytes(header.tobytes() + np.array([1, 2, 3, 50000, 4], dtype="<u2").tobytes())
    assert open_shard(path).tolist() == [1, 2, 3, 50000, 4]


def test_large_vocabularies_use_uint32(tmp_path):
    path = tmp_path / "big.bin"
    write_shard(path, np.array([0, 70000, 5]), vocab_size=100_000)
    shard = open_shard(path)
    assert shard.dtype.itemsize == 4 and shard.tolist() == [0, 70000, 5]
