"""The audit's uniqueness is Brain's score: checked against what Brain runs (sklearn's exact k-NN)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.neighbors
import sklearn.preprocessing

from fercurate.audit.uniqueness import NEIGHBOUR_WEIGHTS, embedding_uniqueness


def brain_uniqueness(embeddings: np.ndarray) -> np.ndarray:
    """Brain's sklearn path: centre, unit length, k=4 neighbours of the indexed points themselves
    (sklearn leaves each point out of its own), the first dropped, weighted, over the largest."""
    unit = sklearn.preprocessing.normalize(embeddings - embeddings.mean(axis=0), axis=1)
    distances, _ = sklearn.neighbors.NearestNeighbors().fit(unit).kneighbors(n_neighbors=len(NEIGHBOUR_WEIGHTS) + 1)
    score = (distances[:, 1:] * NEIGHBOUR_WEIGHTS).mean(axis=1)
    return score / score.max()


def test_matches_an_exact_neighbour_search_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((700, 12)).astype(np.float32)
    embeddings[10] = embeddings[11]  # one exact copy: Brain skips the nearest, so not 0
    embeddings[20:25] = embeddings[25]  # six alike: uniqueness 0
    monkeypatch.setattr("fercurate.audit.uniqueness._BLOCK_VALUES", 700 * 64)  # 11 blocks, the last short
    got = embedding_uniqueness(embeddings, device="cpu")
    np.testing.assert_allclose(got, brain_uniqueness(embeddings), atol=1e-5)
    assert got.max() == 1.0 and got[20] == 0.0 < got[10]


def test_small_and_degenerate_inputs() -> None:
    assert embedding_uniqueness(np.zeros((4, 4))).tolist() == [1.0] * 4  # no fourth other face
    assert embedding_uniqueness(np.ones((6, 4))).tolist() == [0.0] * 6  # all alike: none unique, no NaN
    with pytest.raises(ValueError, match="N x D"):
        embedding_uniqueness(np.zeros(5))
