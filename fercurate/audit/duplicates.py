"""Exact and near duplicates, and the leakage and label conflicts they reveal.

Exact duplicates share the SHA-1 of their decoded pixels. Near duplicates have perceptual hashes
within a Hamming distance; all pairs are compared block by block with vectorised XOR and
popcount (35,887 FER2013 images: about 640 million pairs in a few seconds), never in a Python
loop over pairs. Groups are the connected components of the duplicate pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_BLOCK = 2048


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_distance`` bits, with the distance."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        rest = hashes[start:]
        distance = np.bitwise_count(block[:, None] ^ rest[None, :])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # rest starts at this block: j indexes from `start`, so j > i is the upper triangle
        firsts.append(start + i[keep])
        seconds.append(start + j[keep])
        distances.append(distance[i[keep], j[keep]])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances).astype(np.uint8)


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
