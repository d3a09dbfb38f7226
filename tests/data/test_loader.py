"""The loader's contract: batches are a pure function of (seed, step), resumable, world-size invariant."""
import numpy as np
import pytest
import torch

from data.dataset import open_dataset
from data.loader import BatchLoader
from data.prepare import PrepareConfig, prepare
from gpt.errors import GPTError


def loader(tiny_data, **kw):
    args = dict(block_size=16, batch_size=4, gradient_accumulation_steps=2, seed=7)
    args.update(kw)
    return BatchLoader(open_dataset(tiny_data, "tiny"), **args)


def take(ld, n):
    return [ld.next_batch() for _ in range(n)]


def test_targets_are_inputs_shifted_by_one(tiny_data):
    x, y = loader(tiny_data).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_same_seed_same_batches_other_seed_other_batches(tiny_data):
    a, b, c = take(loader(tiny_data), 6), take(loader(tiny_data), 6), take(loader(tiny_data, seed=8), 6)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_state_resumes_exactly_mid_step(tiny_data):
    first = loader(tiny_data)
    take(first, 5)  # 2.5 optimizer steps
    state = first.state_dict()
    rest = take(first, 6)
    resumed = loader(tiny_data)
    resumed.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, take(resumed, 6)))


def test_resuming_with_another_seed_is_refused(tiny_data):
    with pytest.raises(GPTError, match="--seed=7"):
        loader(tiny_data, seed=9).load_state_dict(loader(tiny_data).state_dict())


def test_ranks_split_each_global_batch_without_overlap(tiny_data):
    single = take(loader(tiny_data, gradient_accumulation_steps=4), 8)  # 2 steps of 4 micro-batches
    rank0 = take(loader(tiny_data, gradient_accumulation_steps=4, rank=0, world_size=2), 4)
    rank1 = take(loader(tiny_data, gradient_accumulation_steps=4, rank=1, world_size=2), 4)
    for step in range(2):
        expected = torch.cat([x for x, _ in single[4 * step:4 * step + 4]])
        got = torch.cat([x for x, _ in rank0[2 * step:2 * step + 2] + rank1[2 * step:2 * step + 2]])
        assert torch.equal(expected, got)


def test_indivisible_accumulation_is_refused(tiny_data):
    with pytest.raises(GPTError, match="divisible by the world size 2"):
        loader(tiny_data, gradient_accumulation_steps=3, world_size=2)


def test_eval_batches_are_fixed_and_differ_by_split(tiny_data):
    ld = loader(tiny_data)
    assert torch.equal(ld.eval_batch("val", 1)[0], loader(tiny_data).eval_batch("val", 1)[0])
    assert not torch.equal(ld.eval_batch("val", 1)[0], ld.eval_batch("train", 1)[0])


def test_windows_come_from_every_shard(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(chr(ord("a") + i // 200) for i in range(1000)))  # 5 letters, 200 each
    prepare(PrepareConfig(dataset="m", input=str(src), data_dir=str(tmp_path), shard_tokens=200, val_fraction=0.2))
    ld = BatchLoader(open_dataset(tmp_path, "m"), block_size=8, batch_size=64, gradient_accumulation_steps=1, seed=0)
    seen = set(np.unique(torch.cat([ld.next_batch()[0] for _ in range(4)]).numpy()).tolist())
    assert seen == {0, 1, 2, 3}  # train = the first four letters' shards; 'e' is val


def test_dataset_shorter_than_a_window_is_explained(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("short text, twenty+ chars")
    prepare(PrepareConfig(dataset="short", input=str(src), data_dir=str(tmp_path)))
    with pytest.raises(GPTError, match=r"block_size \+ 1 = 65"):
        BatchLoader(open_dataset(tmp_path, "short"), block_size=64, batch_size=1, gradient_accumulation_steps=1, seed=0)
