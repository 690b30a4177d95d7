"""How unlike the rest of the dataset each face is: FiftyOne Brain's uniqueness score, computed by
the audit from its embeddings so that the FiftyOne sync only stores it.

The score is Brain's (``fiftyone.brain.compute_uniqueness``, sklearn backend, on a dataset of
more than 15,000 samples): centre the embeddings, scale each to unit length, take the Euclidean
distances to the three nearest other faces, weight them 0.6, 0.3 and 0.1, and divide by the
largest such sum, so the most isolated face scores 1 and a face with three exact copies 0.

Invariants: exact (every pair is compared, no approximate index), in row order, and memory
bounded: the pairwise similarities are computed a block of rows at a time, never as an N x N
matrix, on the GPU when there is one.
"""

from __future__ import annotations

import numpy as np
import torch

from fercurate.compute import resolve_device

#: Weights of the distances to the nearest, second and third nearest other face (Brain's).
NEIGHBOUR_WEIGHTS = (0.6, 0.3, 0.1)
#: The most similarities held at once (64 Mi float32 values: 256 MiB).
_BLOCK_VALUES = 1 << 26


def embedding_uniqueness(embeddings: np.ndarray, *, device: str = "auto") -> np.ndarray:
    """Brain's uniqueness of each row of ``embeddings`` (N x D), float64 in [0, 1].

    With three rows or fewer every row scores 1 (Brain's rule); when every face has three exact
    copies (all distances 0) every row scores 0.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be an N x D array, got shape {vectors.shape}")
    count, neighbours = len(vectors), len(NEIGHBOUR_WEIGHTS)
    if count <= neighbours:
        return np.ones(count)
    on = resolve_device(device)
    unit = torch.from_numpy(vectors).to(on)
    unit = torch.nn.functional.normalize(unit - unit.mean(dim=0, keepdim=True), dim=1)
    lengths = (unit * unit).sum(dim=1)  # 1, or 0 for a face at the mean (it stays a zero vector)
    nearest = torch.empty(count, neighbours, device=on)
    block = max(1, _BLOCK_VALUES // count)
    for start in range(0, count, block):
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b; the row's own |a|^2 does not change which b are nearest
        closeness = 2 * (unit[start:start + block] @ unit.T) - lengths
        rows = torch.arange(closeness.shape[0], device=on)
        closeness[rows, rows + start] = -torch.inf  # a face is not its own neighbour
        nearest[start:start + block] = closeness.topk(neighbours, dim=1).values
    squared = lengths[:, None].double() - nearest.double()
    score = squared.clamp_min(0).sqrt() @ torch.tensor(NEIGHBOUR_WEIGHTS, dtype=torch.float64, device=on)
    top = score.max()
    return (score / top if top > 0 else torch.zeros_like(score)).cpu().numpy()
