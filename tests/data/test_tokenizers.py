"""prepare -> shards -> decode round trips for the gpt2 and bpe tokenizers; the offline GPT-2 error."""
import json

import numpy as np
import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

import data.subword
from data.dataset import open_dataset
from data.prepare import PrepareConfig, prepare
from data.shards import open_shard
from data.subword import EOT_TEXT, load_gpt2_encoding
from data.tokenizer import tokenizer_from_meta
from gpt.errors import GPTError

DOCS = ["The quick brown fox jumps over the lazy dog.\n" * 3, "床前明月光，疑是地上霜。",
        "Un café, s'il vous plaît!\n\nMerci.", "the end " * 30]


def small_gpt2_encoding():
    """A real tiktoken Encoding with GPT-2's split pattern and end-of-text token, but few merges.

    GPT-2's own files are not available offline; what is tested is our wiring around tiktoken.
    """
    ranks = {bytes([i]): i for i in range(256)}
    for pair in (b"th", b"he", b"the", b" t", b" the", b"qu", b"ck"):
        ranks[pair] = len(ranks)
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: len(ranks)})


def write_docs(folder):
    """One document per .txt file (sorted names = document order)."""
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f"doc{i}.txt").write_text(doc, encoding="utf-8")


def decoded(root, name):
    ds = open_dataset(root, name)
    ids = np.concatenate([open_shard(p) for split in ("train", "val") for p in ds.shards[split]])
    return ds, ids, ds.tokenizer.decode(ids.tolist())


def test_gpt2_round_trip_with_end_of_text_between_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(data.subword, "load_gpt2_encoding", small_gpt2_encoding)
    write_docs(tmp_path / "docs")
    prepare(PrepareConfig(dataset="g", input=str(tmp_path / "docs"), data_dir=str(tmp_path), tokenizer="gpt2",
                          workers=1, shard_tokens=100))
    ds, ids, text = decoded(tmp_path, "g")
    eot = small_gpt2_encoding().eot_token
    assert text == EOT_TEXT.join(DOCS)
    assert (ids == eot).sum() == len(DOCS) - 1 and ids.dtype == np.uint16
    assert ds.meta["tokenizer"] == {"kind": "gpt2", "vocab_size": eot + 1, "eot": eot}
    assert len(ids) < len("".join(DOCS).encode("utf-8"))  # the merges were used


def test_bpe_round_trip_and_tokenizer_json(tmp_path):
    write_docs(tmp_path / "docs")
    prepare(PrepareConfig(dataset="b", input=str(tmp_path / "docs"), data_dir=str(tmp_path), tokenizer="bpe",
                          vocab_size=300, workers=1))
    ds, ids, text = decoded(tmp_path, "b")
    assert text == EOT_TEXT.join(DOCS)
    tok = ds.tokenizer
    assert ds.meta["tokenizer"]["kind"] == "bpe" and tok.vocab_size <= 300 and (ids == tok.eot).sum() == len(DOCS) - 1
    from tokenizers import Tokenizer
    saved = Tokenizer.from_file(str(tmp_path / "b" / "tokenizer.json"))
    assert saved.encode(DOCS[1]).ids == tok.encode(DOCS[1])
    rebuilt = tokenizer_from_meta(json.loads(json.dumps(ds.meta["tokenizer"])))  # as a checkpoint carries it
    assert rebuilt.decode(rebuilt.encode(DOCS[2])) == DOCS[2]


def test_bpe_needs_room_for_bytes_and_end_of_text(tmp_path):
    write_docs(tmp_path / "docs")
    with pytest.raises(GPTError, match="at least 257"):
        prepare(PrepareConfig(dataset="b", input=str(tmp_path / "docs"), data_dir=str(tmp_path), tokenizer="bpe",
                              vocab_size=100, workers=1))


def test_vocab_size_is_only_for_bpe(tmp_path):
    with pytest.raises(GPTError, match="--vocab_size is for --tokenizer=bpe"):
        prepare(PrepareConfig(dataset="c", input=str(tmp_path), data_dir=str(tmp_path), vocab_size=500))


def test_gpt2_offline_without_its_files_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # nor a Hugging Face snapshot to fall back on

    def no_network(url):
        raise ConnectionError(f"cannot reach {url}")
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)  # what tiktoken meets offline
    with pytest.raises(GPTError) as err:
        load_gpt2_encoding()
    assert "TIKTOKEN_CACHE_DIR" in str(err.value) and "--tokenizer=bpe" in str(err.value)


def test_decoding_skips_ids_beyond_the_vocabulary(monkeypatch):
    monkeypatch.setattr(data.subword, "load_gpt2_encoding", small_gpt2_encoding)
    tok = data.subword.GPT2Tokenizer()
    ids = tok.encode("the cat")
    assert tok.decode(ids + [tok.vocab_size + 5]) == "the cat"  # a padded model vocabulary can emit these


def test_bpe_shards_are_identical_across_reruns_and_worker_processes(tmp_path):
    write_docs(tmp_path / "docs")
    outputs = []
    for run, workers in enumerate((1, 2)):
        root = tmp_path / f"out{run}"
        prepare(PrepareConfig(dataset="b", input=str(tmp_path / "docs"), data_dir=str(root), tokenizer="bpe",
                              vocab_size=300, workers=workers))
        outputs.append({p.name: p.read_bytes() for p in sorted((root / "b").iterdir())})
    assert set(outputs[0]) == {"meta.json", "tokenizer.json", "train_000000.bin", "val_000000.bin"}
    assert outputs[0] == outputs[1]


def test_a_gpt2_prepare_that_cannot_load_the_encoding_leaves_the_old_dataset_alone(tmp_path, monkeypatch):
    write_docs(tmp_path / "docs")
    prepare(PrepareConfig(dataset="x", input=str(tmp_path / "docs"), data_dir=str(tmp_path), workers=1))

    def offline():
        raise GPTError("offline")
    monkeypatch.setattr(data.subword, "load_gpt2_encoding", offline)
    with pytest.raises(GPTError, match="offline"):
        prepare(PrepareConfig(dataset="x", input=str(tmp_path / "docs"), data_dir=str(tmp_path), tokenizer="gpt2"))
    assert open_dataset(tmp_path, "x").meta["tokenizer"]["kind"] == "char"
