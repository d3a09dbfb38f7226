"""GPT-2's tokenizer from a Hugging Face snapshot's vocab.json + merges.txt: the same ids as tiktoken's, offline."""
import json

import numpy as np
import pytest

import data.subword
from data.dataset import open_dataset
from data.gpt2_files import SnapshotEncoding, byte_to_unicode, read_merges, vocab_and_merges
from data.prepare import PrepareConfig, prepare
from data.shards import open_shard
from gpt.errors import GPTError

SAMPLES = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\n\n",
    "It's 2024; they'll say   \"don't\" isn't   it?\t\tTabs, 12345 numbers and 3.14.",
    "  leading and trailing spaces  \n\n\n  ",
    "Unicode: café naïve 床前明月光 emoji 🙂👍🏽 — dashes – and ‘quotes’.",
    "a literal <|endoftext|> inside a document is text",
]


def test_the_byte_table_is_gpt2s():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("!")], table[ord("é")]) == ("Ġ", "Ċ", "!", "é")
    ids = {c: i for i, c in enumerate(sorted(table.values()))}  # GPT-2's vocab.json numbers bytes this way
    assert (ids["!"], ids["Ġ"], ids["Ċ"]) == (0, 220, 198)


def test_snapshot_files_encode_like_tiktoken(gpt2_snapshot):
    _, folder, encoding = gpt2_snapshot
    ours = SnapshotEncoding(folder)
    assert (ours.n_vocab, ours.eot_token) == (encoding.n_vocab, encoding.eot_token)
    for text in SAMPLES:
        ids = ours.encode_ordinary(text)
        assert ids == encoding.encode_ordinary(text), text
        assert ours.decode(ids) == text
    merged = ours.encode_ordinary(SAMPLES[0])
    assert len(merged) < len(SAMPLES[0])  # the merges were used, not just bytes
    assert all(ours.decode_single_token_bytes(i) == encoding.decode_single_token_bytes(i) for i in range(ours.n_vocab))


def test_vocab_and_merges_are_rebuilt_from_the_token_bytes(gpt2_snapshot):
    _, folder, encoding = gpt2_snapshot
    vocab, merges = vocab_and_merges(encoding.decode_single_token_bytes, encoding.n_vocab, encoding.eot_token)
    assert vocab == json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert [tuple(m.split(" ")) for m in merges] == read_merges(folder / "merges.txt")


def test_gpt2_encoding_falls_back_to_the_cached_snapshot_offline(offline_gpt2):
    _, folder, encoding = offline_gpt2
    loaded = data.subword.load_gpt2_encoding()
    assert isinstance(loaded, SnapshotEncoding) and loaded.folder == folder
    assert loaded.encode_ordinary(SAMPLES[1]) == encoding.encode_ordinary(SAMPLES[1])


def test_prepare_gpt2_offline_from_the_snapshot_gives_tiktokens_ids(offline_gpt2, tmp_path):
    _, _, encoding = offline_gpt2
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(SAMPLES):
        (tmp_path / "docs" / f"{i}.txt").write_text(text, encoding="utf-8")
    prepare(PrepareConfig(dataset="g", input=str(tmp_path / "docs"), data_dir=str(tmp_path), tokenizer="gpt2", workers=1))
    ds = open_dataset(tmp_path, "g")
    ids = np.concatenate([open_shard(p) for split in ("train", "val") for p in ds.shards[split]]).tolist()
    expected = []
    for i, text in enumerate(SAMPLES):
        expected += ([encoding.eot_token] if i else []) + encoding.encode_ordinary(text)
    assert ids == expected
    assert ds.meta["tokenizer"] == {"kind": "gpt2", "vocab_size": encoding.n_vocab, "eot": encoding.eot_token}


def test_without_tiktoken_cache_or_snapshot_the_error_says_how_to_bring_either(offline_gpt2, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(GPTError) as err:
        data.subword.load_gpt2_encoding()
    message = str(err.value)
    for words in ("TIKTOKEN_CACHE_DIR", "hf download openai-community/gpt2 vocab.json merges.txt", "HF_HOME",
                  str(tmp_path / "empty-hf-cache"), "--tokenizer=bpe"):
        assert words in message
