"""The multi-index hash search finds exactly the pairs of the all-pairs scan, planted copies included."""

from __future__ import annotations

import numpy as np
import pytest

from fercurate.audit.duplicates import all_pairs_near_duplicates, components, near_duplicate_pairs


def hashes_with_plants(count: int, distance: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Random hashes, a crowded bucket (shared low 32 bits, larger than the shifted passes), and near
    copies with 0..distance bits flipped; returns the hashes and the planted (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, np.iinfo(np.int64).max, size=count, dtype=np.int64).astype(np.uint64)
    base[:300] = (base[:300] & np.uint64(0xFFFFFFFF00000000)) | np.uint64(0x1234)
    originals = rng.choice(count, size=count // 4, replace=False)
    copies = base[originals].copy()
    flips = rng.integers(0, distance + 1, size=len(copies))
    bits = np.stack([rng.permutation(64)[:max(distance, 1)] for _ in copies]).astype(np.uint64)
    for column in range(distance):
        copies = np.where(flips > column, copies ^ (np.uint64(1) << bits[:, column]), copies)
    hashes = np.concatenate([base, copies])
    return hashes, [(int(a), count + i) for i, a in enumerate(originals)]


@pytest.mark.parametrize("distance", [0, 1, 2, 4, 6, 10, 20])
def test_index_finds_exactly_the_all_pairs_groups(distance: int) -> None:
    hashes, planted = hashes_with_plants(2_000, distance, seed=distance)
    index = near_duplicate_pairs(hashes, distance)
    scan = all_pairs_near_duplicates(hashes, distance)
    for from_index, from_scan in zip(index, scan):
        np.testing.assert_array_equal(from_index, from_scan)
    assert set(planted) <= set(zip(index[0].tolist(), index[1].tolist()))
    assert np.all(index[0] < index[1]) and np.all(index[2] <= distance)
    np.testing.assert_array_equal(components(len(hashes), *index[:2]), components(len(hashes), *scan[:2]))


def test_no_pairs_and_single_hash() -> None:
    assert all(len(part) == 0 for part in near_duplicate_pairs(np.array([7], np.uint64), 4))
    far = np.array([0, 0xFFFFFFFFFFFFFFFF], np.uint64)
    assert all(len(part) == 0 for part in near_duplicate_pairs(far, 4))
