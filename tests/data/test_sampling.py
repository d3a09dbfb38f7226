"""Sequential sampling, prefetching and lazy maps: every window once per epoch, whatever the world size."""
import dataclasses
import gc
import threading

import numpy as np
import pytest
import torch

from data.dataset import open_dataset
from data.loader import BatchLoader
from data.prepare import PrepareConfig, prepare
from data.sampling import permute
from gpt.config import load_config
from gpt.errors import GPTError

BLOCK = 8


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """A dataset whose train tokens are 0, 1, 2, ... in 5 shards, so a window's first token says where it starts."""
    root = tmp_path_factory.mktemp("counted")
    src = root / "in.txt"
    src.write_text("".join(chr(0x4E00 + i) for i in range(1000)), encoding="utf-8")  # 1000 distinct CJK characters
    prepare(PrepareConfig(dataset="c", input=str(root / "in.txt"), data_dir=str(root), shard_tokens=170,
                          val_fraction=0.1, workers=1))
    return root


def windows_of_epoch(root, world_size, accum=4, batch=3, seed=5, steps=None):
    """Window starts of the global batches, rank slices put back in global order, for the first `steps` steps."""
    loaders = [BatchLoader(open_dataset(root, "c"), BLOCK, batch, accum, seed, rank=r, world_size=world_size,
                           sampling="sequential") for r in range(world_size)]
    per_epoch = loaders[0].train.windows_per_epoch
    steps = steps or -(-per_epoch // (accum * batch))
    starts = []
    for _ in range(steps):
        for ld in loaders:  # rank order = global order within a step
            for _ in range(accum // world_size):
                x, y = ld.next_batch()
                assert torch.equal(x[:, 1:], y[:, :-1])
                starts.extend(x[:, 0].tolist())
    return starts, per_epoch


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    keys = np.random.SeedSequence(3).generate_state(4, dtype=np.uint64)
    out = permute(np.arange(n), n, keys)
    assert sorted(out.tolist()) == list(range(n))
    if n > 16:
        assert not np.array_equal(out, np.arange(n))


def test_sequential_epoch_covers_every_window_once_on_1_2_4_ranks(counted):
    reference = None
    for world in (1, 2, 4):
        starts, per_epoch = windows_of_epoch(counted, world)
        epoch = starts[:per_epoch]
        assert len(set(epoch)) == per_epoch  # no window twice within the epoch
        if reference is None:
            reference = starts
        assert starts == reference  # the same global sequence whatever the world size
    ds = open_dataset(counted, "c")
    all_windows = sorted(
        sum(ds.sizes["train"][:s]) + BLOCK * k
        for s, n in enumerate(ds.sizes["train"]) for k in range((n - 1) // BLOCK))
    assert len(ds.sizes["train"]) > 1 and per_epoch == len(all_windows) > 50
    assert sorted(reference[:per_epoch]) == all_windows  # every window of every shard, exactly once


def test_next_epoch_is_another_order_of_the_same_windows(counted):
    starts, per_epoch = windows_of_epoch(counted, 1, steps=None)
    more, _ = windows_of_epoch(counted, 1, steps=2 * -(-per_epoch // 12) + 1)
    first, second = more[:per_epoch], more[per_epoch:2 * per_epoch]
    assert sorted(first) == sorted(second) and first != second


def test_sequential_resume_mid_epoch_continues_the_sequence(counted):
    def make():
        return BatchLoader(open_dataset(counted, "c"), BLOCK, 3, 2, seed=1, sampling="sequential")
    first = make()
    for _ in range(7):  # 3.5 steps
        first.next_batch()
    state = first.state_dict()
    rest = [first.next_batch()[0] for _ in range(9)]
    resumed = make()
    resumed.next_batch()  # the prefetch thread is already ahead: loading a state must discard that
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next_batch()[0]) for a in rest)


def test_prefetching_never_changes_the_batches(counted):
    for sampling in ("random", "sequential"):
        a = BatchLoader(open_dataset(counted, "c"), BLOCK, 4, 2, seed=3, sampling=sampling, prefetch=0)
        b = BatchLoader(open_dataset(counted, "c"), BLOCK, 4, 2, seed=3, sampling=sampling, prefetch=3)
        for _ in range(10):
            xa, ya = a.next_batch()
            xb, yb = b.next_batch()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(a.batch_at(7, 1)[0], b.batch_at(7, 1)[0])


def test_resuming_with_another_sampling_is_refused(counted):
    state = BatchLoader(open_dataset(counted, "c"), BLOCK, 2, 1, seed=0).state_dict()
    with pytest.raises(GPTError, match="--sampling=random"):
        BatchLoader(open_dataset(counted, "c"), BLOCK, 2, 1, seed=0, sampling="sequential").load_state_dict(state)


def test_unknown_sampling_is_refused():
    with pytest.raises(GPTError, match="--sampling='shuffled' is not one of random, sequential"):
        load_config(["--sampling=shuffled"])


def test_shards_are_mapped_lazily_and_boundedly(counted):
    ld = BatchLoader(open_dataset(counted, "c"), BLOCK, 16, 1, seed=0, prefetch=0)
    assert ld.train.reader.open_maps == 0 and ld.val.reader.open_maps == 0
    ld.train.reader.max_open = 2
    ld.train.reader.release = False  # keep pages mapped: the windows must be the same either way
    batches = [ld.next_batch()[0] for _ in range(5)]
    assert 1 <= ld.train.reader.open_maps <= 2 and ld.val.reader.open_maps == 0
    again = BatchLoader(open_dataset(counted, "c"), BLOCK, 16, 1, seed=0, prefetch=0)
    assert all(torch.equal(a, again.next_batch()[0]) for a in batches)


def test_a_dropped_loader_stops_its_thread(counted):
    before = set(threading.enumerate())
    ld = BatchLoader(open_dataset(counted, "c"), BLOCK, 2, 1, seed=0)
    ld.next_batch()
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "batch-prefetch"]
    del ld
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_an_error_in_the_prefetch_thread_reaches_the_caller_and_a_retry_works(counted):
    ld = BatchLoader(open_dataset(counted, "c"), BLOCK, 2, 1, seed=0)
    good = ld.train.reader.files
    ld.train.reader.files = [dataclasses.replace(f, path=f.path.with_name("gone.bin")) for f in good]
    with pytest.raises(GPTError, match="cannot memory-map shard .*gone.bin"):
        ld.next_batch()
    ld.train.reader.files = good
    x, _ = ld.next_batch()
    assert torch.equal(x, BatchLoader(open_dataset(counted, "c"), BLOCK, 2, 1, seed=0).batch_at(0, 0)[0])
