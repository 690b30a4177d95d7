"""Exact and near duplicates, and the leakage and label conflicts they reveal.

Exact duplicates share the SHA-1 of their decoded pixels. Near duplicates have 64-bit perceptual
hashes within a Hamming distance ``k``, found exactly (no pair is missed, none is approximate) by
multi-index hashing: split every hash into ``k + 1`` bit ranges; by the pigeonhole principle two
hashes within distance ``k`` agree exactly on at least one range, so only hashes that share a range
value are compared (sorting by the range value puts them side by side). A million hashes are
searched in seconds instead of the all-pairs scan's hours; :func:`all_pairs_near_duplicates`, the
scan, stays as the reference the index is tested against. Everything is vectorised: XOR and
popcount over arrays, never a Python loop over pairs. Groups are the connected components of the
duplicate pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_BLOCK = 2048  # rows of one all-pairs block: 2048 x N distances at a time
_SHIFTED_PASSES = 64  # bucket-neighbour offsets compared by shifting; larger buckets use blocks
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> Pairs:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_distance`` bits, with the
    distance, sorted by (i, j): exactly the pairs of :func:`all_pairs_near_duplicates`."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    ranges = max_distance + 1
    if ranges > 16:  # ranges of fewer than 4 bits share values everywhere: the scan is faster
        return all_pairs_near_duplicates(hashes, max_distance)
    bounds = np.linspace(0, 64, ranges + 1).astype(np.uint64)
    keys = [(hashes >> low) & np.uint64((1 << int(high - low)) - 1) for low, high in zip(bounds[:-1], bounds[1:])]
    found: list[Pairs] = []
    for index, key in enumerate(keys):
        order = np.argsort(key, kind="stable")
        found.extend(_pairs_sharing_key(hashes, keys[:index], key, order, max_distance))
    return _sorted_pairs(found)


def _pairs_sharing_key(hashes: np.ndarray, earlier_keys: list[np.ndarray], key: np.ndarray, order: np.ndarray,
                       max_distance: int) -> list[Pairs]:
    """Close pairs among hashes with equal ``key``, leaving out pairs that an earlier key already
    shares (they were found there), so every pair is reported once."""
    sorted_key = key[order]
    found = []
    for offset in range(1, _SHIFTED_PASSES + 1):  # neighbours in sorted order, `offset` apart
        same = np.flatnonzero(sorted_key[:-offset] == sorted_key[offset:])
        if not len(same):
            return found
        found.append(_close(hashes, earlier_keys, order[same], order[same + offset], max_distance))
    # Buckets larger than the passes: compare the rest of each such bucket block by block.
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_key)])
    for start, size in zip(starts[sizes > _SHIFTED_PASSES + 1], sizes[sizes > _SHIFTED_PASSES + 1]):
        members = order[start:start + size]
        first, second, _ = all_pairs_near_duplicates(hashes[members], max_distance, min_gap=_SHIFTED_PASSES + 1)
        found.append(_close(hashes, earlier_keys, members[first], members[second], max_distance))
    return found


def _close(hashes: np.ndarray, earlier_keys: list[np.ndarray], first: np.ndarray, second: np.ndarray,
           max_distance: int) -> Pairs:
    """The candidate pairs within ``max_distance`` that no earlier key links, as (i < j, distance)."""
    distance = np.bitwise_count(hashes[first] ^ hashes[second])
    keep = distance <= max_distance
    for earlier in earlier_keys:
        keep &= earlier[first] != earlier[second]
    first, second, distance = first[keep], second[keep], distance[keep]
    return np.minimum(first, second), np.maximum(first, second), distance.astype(np.uint8)


def _sorted_pairs(found: list[Pairs]) -> Pairs:
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    first, second, distance = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((second, first))
    return first[order].astype(np.int64), second[order].astype(np.int64), distance[order]


def all_pairs_near_duplicates(hashes: np.ndarray, max_distance: int, min_gap: int = 1) -> Pairs:
    """Every pair (i, j), ``j - i >= min_gap``, within ``max_distance`` bits, by comparing all pairs
    block by block: quadratic, the reference for :func:`near_duplicate_pairs`."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        rest = hashes[start:]
        distance = np.bitwise_count(block[:, None] ^ rest[None, :])
        i, j = np.nonzero(distance <= max_distance)
        keep = j >= i + min_gap  # rest starts at this block: j indexes from `start`
        firsts.append(start + i[keep])
        seconds.append(start + j[keep])
        distances.append(distance[i[keep], j[keep]].astype(np.uint8))
    return _sorted_pairs(list(zip(firsts, seconds, distances)))


def exact_duplicate_pairs(sha1: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs linking each image to the first image with the same pixel hash."""
    codes = pd.factorize(pd.Series(sha1))[0]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first_index = order[np.searchsorted(sorted_codes, sorted_codes)]
    duplicate = first_index != order
    return first_index[duplicate], order[duplicate]


def components(count: int, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Group number of each item (-1 for items in no pair), numbered by first member."""
    graph = coo_matrix((np.ones(len(firsts), np.int8), (firsts, seconds)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    labels = np.where(sizes[labels] > 1, labels, -1)
    grouped = labels >= 0
    renumbered = np.full(count, -1, np.int64)
    renumbered[grouped] = pd.factorize(labels[grouped])[0]
    return renumbered


@dataclass
class DuplicateFindings:
    """Per row: its exact and near group (-1: none), the group's first id, and what the group spans."""

    exact_group: np.ndarray
    near_group: np.ndarray
    duplicate_of: list[str | None]
    cross_split: np.ndarray
    conflicting_labels: np.ndarray
    groups: pd.DataFrame  # one row per near group: size, ids, splits, labels, flags


def find_duplicates(ids: Sequence[str], sha1: Sequence[str], phash: np.ndarray, splits: Sequence[str | None],
                    labels: Sequence[str], max_distance: int = 4) -> DuplicateFindings:
    """Exact and near-duplicate groups, and which of them cross splits or disagree on the label.

    Near groups include exact duplicates (distance 0). ``splits`` is what leakage is judged on
    (the curated split if assigned, else the source's split); rows without one never leak.
    """
    count = len(ids)
    exact_first, exact_second = exact_duplicate_pairs(sha1)
    exact_group = components(count, exact_first, exact_second)
    near_first, near_second, _ = near_duplicate_pairs(phash, max_distance)
    near_group = components(count, np.concatenate([exact_first, near_first]),
                            np.concatenate([exact_second, near_second]))

    frame = pd.DataFrame({"id": list(ids), "group": near_group, "split": list(splits), "label": list(labels),
                          "exact_group": exact_group})
    members = frame[frame.group >= 0].sort_values(["group", "id"])
    grouped = members.groupby("group")
    groups = pd.DataFrame({
        "size": grouped.size(),
        "exact": grouped.exact_group.agg(lambda values: bool((values >= 0).all() and values.nunique() == 1)),
        "ids": grouped.id.agg(list),
        "splits": grouped.split.agg(lambda values: sorted({v for v in values if v is not None})),
        "labels": grouped.label.agg(lambda values: sorted(set(values))),
    })
    groups["cross_split"] = groups.splits.map(len) > 1
    groups["conflicting_labels"] = groups.labels.map(len) > 1
    groups.index.name = "group"

    first_id = grouped.id.first()
    duplicate_of = [first_id[group] if group >= 0 and first_id[group] != row_id else None
                    for row_id, group in zip(frame.id, frame.group)]
    in_group = near_group >= 0
    cross_split = np.zeros(count, bool)
    conflicting = np.zeros(count, bool)
    cross_split[in_group] = groups.cross_split.to_numpy()[near_group[in_group]]
    conflicting[in_group] = groups.conflicting_labels.to_numpy()[near_group[in_group]]
    return DuplicateFindings(exact_group, near_group, duplicate_of, cross_split, conflicting, groups.reset_index())
