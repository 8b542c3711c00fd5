"""The library's index arithmetic as the package calls it (``_native.shard_order``,
``_native.kept_rows``), against PyTorch's own samplers iterated (the independent oracle): the
expected values come from ``DistributedSampler`` and ``BatchSampler``, never from the code
under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

from arraydrain import DrainMemoryError, DrainValueError, _native


@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_order_is_distributed_samplers_share_of_any_order(drop_last):
    rng = np.random.default_rng(5)
    for n in [0, 1, 2, 3, 7, 10, 16, 33]:
        perm = rng.permutation(n).astype(np.int64) * 3 + 1  # any values, not positions
        for world in [1, 2, 3, 4, 5, 8, 40]:
            for rank in range(world):
                sampler = DistributedSampler(
                    range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last
                )
                expected = perm[np.array(list(sampler), dtype=np.int64)] if n else perm[:0]
                got = _native.shard_order(perm, rank, world, drop_last)
                assert got.dtype == np.int64
                assert got.tolist() == expected.tolist(), (n, world, rank, drop_last)
                assert len(got) == len(sampler)


def test_shard_order_with_pytorchs_shuffle_matches_the_sampler():
    for n, world in [(10, 3), (2, 5), (17, 4)]:
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, seed=3)
            sampler.set_epoch(2)
            g = torch.Generator()
            g.manual_seed(3 + 2)
            perm = torch.randperm(n, generator=g).numpy()
            got = _native.shard_order(perm, rank, world, False)
            assert got.tolist() == list(sampler)


def test_shard_order_refuses_bad_shards_naming_them():
    order = np.arange(4, dtype=np.int64)
    with pytest.raises(DrainValueError, match="rank 3 is not below world_size 3"):
        _native.shard_order(order, 3, 3, False)
    with pytest.raises(DrainValueError, match="world_size must be at least 1"):
        _native.shard_order(order, 0, 0, False)
    with pytest.raises(DrainValueError, match=r"world_size 1048577 is more ranks"):
        _native.shard_order(order, 0, 2**20 + 1, False)
    with pytest.raises(OverflowError):
        _native.shard_order(order, -1, 2, False)
    # Non-contiguous orders are read correctly.
    strided = np.arange(20, dtype=np.int64)[::2]
    assert _native.shard_order(strided, 1, 3, False).tolist() == [2, 8, 14, 0]


@pytest.mark.parametrize("drop_last", [False, True])
def test_kept_rows_is_what_batch_sampler_yields(drop_last):
    for n in [0, 1, 5, 8, 9, 31]:
        for bs in [1, 2, 3, 8, 40]:
            batches = BatchSampler(SequentialSampler(range(n)), bs, drop_last)
            expected = sum(len(b) for b in batches)
            assert _native.kept_rows(n, bs, drop_last) == expected, (n, bs, drop_last)


def test_kept_rows_at_the_limits():
    top = 2**64 - 1
    assert _native.kept_rows(top, 1, True) == top
    assert _native.kept_rows(top, 2, True) == top - 1
    assert _native.kept_rows(top, top, True) == top
    assert _native.kept_rows(top - 1, top, True) == 0
    assert _native.kept_rows(top, 7, False) == top
    with pytest.raises(DrainValueError, match="batch_size must be at least 1"):
        _native.kept_rows(5, 0, False)
    with pytest.raises(OverflowError):
        _native.kept_rows(2**64, 1, False)
    assert issubclass(DrainMemoryError, MemoryError)  # what a padded-length overflow raises
