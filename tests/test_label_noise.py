"""Label noise: the CNN's out-of-fold probabilities find flipped labels, the flags are capped to the
worst, and the FER+ check computes precision at each depth exactly as defined."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fercurate.audit.label_noise import (
    ferplus_agreement,
    ferplus_precision_table,
    find_label_issues,
    image_features,
)
from fercurate.audit.noise_cnn import cnn_out_of_fold_probabilities
from fercurate.errors import OptionError
from fercurate.schema import CANONICAL_LABELS
from fercurate.sources.demo import draw_demo_faces


@pytest.fixture(scope="module")
def flipped_faces() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Demo faces, 30 per class, with two faces per class given another class's label."""
    images, codes = draw_demo_faces(per_class=30, seed=3)
    rng = np.random.default_rng(1)
    flipped = np.concatenate([rng.choice(np.flatnonzero(codes == code), 2, replace=False) for code in range(7)])
    given = codes.copy()
    given[flipped] = (codes[flipped] + 3) % 7
    return images, np.array([CANONICAL_LABELS[code] for code in given]), flipped


def test_cnn_noise_model_ranks_the_flipped_labels_worst(flipped_faces: tuple) -> None:
    images, labels, flipped = flipped_faces
    found = find_label_issues(np.zeros((len(labels), 2)), labels, "cnn", folds=3, thumbnails=images,
                              max_minutes=3)
    assert found.cross_validated_accuracy > 0.8
    worst = np.argsort(found.label_quality)[:len(flipped)]
    assert len(set(worst) & set(flipped)) >= len(flipped) - 2
    flagged = set(np.flatnonzero(found.label_issue))
    assert len(flagged & set(flipped)) >= 10 and len(flagged - set(flipped)) <= 2  # cleanlab is cautious
    for row in flipped:  # the suggested label is the true one, with the model's probability for it
        if found.label_issue[row]:
            true = CANONICAL_LABELS[(CANONICAL_LABELS.index(labels[row]) - 3) % 7]
            assert found.predicted_label[row] == true and 0.3 < found.predicted_probability[row] <= 1.0
    assert "small CNN" in found.method and "3 minutes" in found.method


def test_flags_are_capped_to_the_least_trustworthy_labels(flipped_faces: tuple) -> None:
    images, labels, _ = flipped_faces
    features = image_features(images)
    every = find_label_issues(features, labels, "hog-logreg", max_flagged=None)
    capped = find_label_issues(features, labels, "hog-logreg", max_flagged=5)
    assert every.label_issue.sum() == every.issues_found == capped.issues_found > 5
    assert capped.label_issue.sum() == 5
    flagged_qualities = np.sort(every.label_quality[every.label_issue])
    np.testing.assert_allclose(np.sort(capped.label_quality[capped.label_issue]), flagged_qualities[:5])


def test_the_cnn_needs_thumbnails_and_auto_picks_by_size(flipped_faces: tuple) -> None:
    images, labels, _ = flipped_faces
    with pytest.raises(OptionError, match="thumbnails"):
        find_label_issues(np.zeros((len(labels), 2)), labels, "cnn")
    features = image_features(images)
    assert "logistic regression" in find_label_issues(features, labels, "auto", thumbnails=images).method


def test_cnn_probabilities_are_out_of_fold_repeatable_and_fit_the_budget() -> None:
    images, codes = draw_demo_faces(per_class=12, seed=5)
    first = cnn_out_of_fold_probabilities(images, codes, 7, folds=2, epochs=1, seed=4)
    again = cnn_out_of_fold_probabilities(images, codes, 7, folds=2, epochs=1, seed=4)
    assert first.shape == (len(codes), 7)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, again)

    started = time.perf_counter()
    steps: list[int] = []
    cnn_out_of_fold_probabilities(images, codes, 7, folds=3, epochs=100_000, max_minutes=0.05,
                                  progress=lambda done, total: steps.append(done))
    assert time.perf_counter() - started < 60  # a 3-second budget, not 100,000 epochs
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3


def test_ferplus_precision_at_each_depth() -> None:
    labels = ["happiness"] * 6
    happy, sad = ("happiness", "sadness")

    def votes(own: float, other: float, nf: float = 0.0) -> list[tuple[str, float]]:
        return [(happy, own), (sad, other), ("NF", nf)]

    rows = [votes(1, 9),     # disputed by a strict majority (9 of 10)
            votes(3, 4, 3),  # disputed by the majority only (4 of 10)
            votes(4, 4),     # a tie: not disputed
            votes(2, 0, 3),  # "not a face" wins, 3 of 5: disputed, strictly
            votes(8, 2),     # agrees
            None]            # no votes: not counted
    quality = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.0])
    flagged = np.array([True, True, False, False, False, True])
    check = ferplus_agreement(rows, labels, ["original"] * 6, flagged, quality, depths=(1, 2, 3, 5, 6))
    assert check["rows_with_votes"] == 5 and check["flagged_with_votes"] == 2
    assert [entry["top"] for entry in check["precision_at"]] == [1, 2, 3, 5]  # 6 is deeper than the ranking
    assert [entry["majority"] for entry in check["precision_at"]] == [1.0, 1.0, 0.6667, 0.6]
    assert [entry["strict_majority"] for entry in check["precision_at"]] == [1.0, 0.5, 0.3333, 0.4]
    assert check["base_rate"] == {"majority": 0.6, "strict_majority": 0.4}
    assert check["ferplus_disagrees_when_flagged"] == 1.0 and check["ferplus_disagrees_when_not_flagged"] == 0.3333
    table = ferplus_precision_table(check)
    assert table["images"].tolist() == ["top 1", "top 2", "top 3", "top 5", "flagged (2)", "all (5, base rate)"]

    mixed = [votes(5, 5, 0), votes(3, 6, 0)]  # a tie (not disputed) and 6 of 9 (strict)
    split = ferplus_agreement(mixed + [votes(4, 3, 3)], labels[:3], ["original"] * 3, np.zeros(3, bool),
                              np.array([0.3, 0.1, 0.2]), depths=(1, 2))
    assert [(e["majority"], e["strict_majority"]) for e in split["precision_at"]] == [(1.0, 1.0), (0.5, 0.5)]
    assert split["base_rate"] == {"majority": 0.3333, "strict_majority": 0.3333}
    assert ferplus_agreement([None, None], labels[:2], ["original"] * 2, np.zeros(2, bool), np.zeros(2)) is None
    relabelled = ferplus_agreement(rows, labels, ["ferplus-majority"] * 6, flagged, quality)
    assert "no independent check" in relabelled["note"]
