"""How unlike the rest of the dataset each face is: FiftyOne Brain's uniqueness score, computed by
the audit from its embeddings so that the FiftyOne sync only stores it.

The score is Brain's (``fiftyone.brain.compute_uniqueness`` with the sklearn backend): centre the
embeddings, scale each to unit length, find each face's four nearest other faces, and weight the
Euclidean distances to the second, third and fourth of them 0.6, 0.3 and 0.1 (Brain asks for
k=4 neighbours, which never include the face itself, and drops the first as if it were), then
divide by the largest such sum, so the most isolated face scores 1. So a face with one exact copy
is not scored 0 (near and exact copies have their own audit check); one with four copies is.

Invariants: exact (every pair is compared, no approximate index), in row order, and memory
bounded: the pairwise similarities are computed a block of rows at a time, never as an N x N
matrix, on the GPU when there is one.
"""

from __future__ import annotations

import numpy as np
import torch

from fercurate.compute import resolve_device

#: Weights of the distances to the second, third and fourth nearest other face (Brain's).
NEIGHBOUR_WEIGHTS = (0.6, 0.3, 0.1)
#: The most similarities held at once (16 Mi float32 values: 64 MiB).
_BLOCK_VALUES = 1 << 24


def embedding_uniqueness(embeddings: np.ndarray, *, device: str = "auto") -> np.ndarray:
    """Brain's uniqueness of each row of ``embeddings`` (N x D), float64 in [0, 1].

    With four rows or fewer every row scores 1 (there is no fourth other face; Brain scores three
    or fewer so); when every face has four exact copies (all distances 0) every row scores 0.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be an N x D array, got shape {vectors.shape}")
    count, neighbours = len(vectors), len(NEIGHBOUR_WEIGHTS) + 1
    if count <= neighbours:
        return np.ones(count)
    on = resolve_device(device)
    unit = torch.from_numpy(vectors).to(on)
    unit = torch.nn.functional.normalize(unit - unit.mean(dim=0, keepdim=True), dim=1)
    lengths = (unit * unit).sum(dim=1)  # 1, or 0 for a face at the mean (it stays a zero vector)
    # |a - b|^2 = |a|^2 - (2 a.b - |b|^2), and [a, 1] . [2b, -|b|^2] is the bracket: one product per
    # block ranks every other face (the row's own |a|^2 does not change which b are nearest)
    rows_side = torch.cat([unit, torch.ones(count, 1, device=on)], dim=1)
    columns_side = torch.cat([2 * unit, -lengths[:, None]], dim=1).T.contiguous()
    nearest = torch.empty(count, neighbours, device=on)
    block = max(1, _BLOCK_VALUES // count)
    for start in range(0, count, block):
        closeness = rows_side[start:start + block] @ columns_side
        rows = torch.arange(closeness.shape[0], device=on)
        closeness[rows, rows + start] = -torch.inf  # a face is not its own neighbour
        nearest[start:start + block] = closeness.topk(neighbours, dim=1).values
    squared = lengths[:, None].double() - nearest[:, 1:].double()  # Brain skips the nearest
    score = squared.clamp_min(0).sqrt() @ torch.tensor(NEIGHBOUR_WEIGHTS, dtype=torch.float64, device=on)
    top = score.max()
    return (score / top if top > 0 else torch.zeros_like(score)).cpu().numpy()
