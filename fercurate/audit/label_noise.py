"""Likely mislabelled images, by confident learning on out-of-sample predicted probabilities.

A model is trained k times, each time predicting the fold it did not see, so every image's
predicted probabilities are out-of-sample (cleanlab requires this). The model is a small CNN on
the faces themselves (:mod:`fercurate.audit.noise_cnn`) from 2,000 images on, and logistic
regression on HOG features reduced by PCA below that (a CNN overfits a few hundred faces); the
reduced HOG features are also the embeddings behind FiftyOne's similarity search and the audit's
uniqueness. cleanlab then scores every label's quality and flags label issues; the flags are capped to the worst
``max_flagged`` (a set a person can review), and each says which label the model suggests and
with what probability.

Measured against FER+'s crowd of ten on the full FER2013 (README): the FER+ majority disputes 61% of
the HOG + MLP model's 1,000 most doubted labels and 83% of the CNN's, against a base rate of 35%.
:func:`ferplus_agreement` is that measurement, reported by every audit of a workspace with FER+
votes and FER2013's own labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from fercurate.errors import OptionError
from fercurate.schema import CANONICAL_LABELS

#: What each :data:`fercurate.options.NoiseModel` value means (the same keys).
NOISE_MODELS = {
    "auto": "cnn from 2,000 audited images on, hog-logreg below (a CNN or an MLP overfits small sets)",
    "cnn": "a small CNN (135k parameters) trained on the faces under a time budget",
    "hog-mlp": "HOG features (PCA) into a one-hidden-layer MLP (256 units)",
    "hog-logreg": "HOG features (PCA) into multinomial logistic regression",
}


_CNN_FROM = 2000
#: How many flags a review gets by default: the worst-scored labels cleanlab flags, at most this many.
DEFAULT_MAX_FLAGGED = 1000
#: The depths at which the audit measures its ranking against FER+.
PRECISION_DEPTHS = (100, 500, 1000, 5000)


def image_features(thumbnails: np.ndarray, dimensions: int = 128, seed: int = 0) -> np.ndarray:
    """Standardised PCA of HOG descriptors of 48x48 gray thumbnails: float32 (N, d), where d is
    ``dimensions`` capped at a tenth of the images (more dimensions than that let a quick model
    memorise the label noise it is meant to find)."""
    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    descriptors = np.stack([hog.compute(thumb).ravel() for thumb in thumbnails])
    dimensions = max(1, min(dimensions, max(8, len(descriptors) // 10), descriptors.shape[1], len(descriptors) - 1))
    reduced = PCA(dimensions, random_state=seed).fit_transform(StandardScaler().fit_transform(descriptors))
    return StandardScaler().fit_transform(reduced).astype(np.float32)


def _model(name: str, seed: int) -> Any:
    if name == "hog-mlp":
        return MLPClassifier((256,), max_iter=30, early_stopping=True, alpha=1e-3, random_state=seed)
    if name == "hog-logreg":
        return LogisticRegression(max_iter=300)
    raise OptionError(f"unknown noise model {name!r}", f"use one of {', '.join(NOISE_MODELS)}")


@dataclass
class LabelNoiseFindings:
    """Per audited row: label quality (0 worst .. 1), whether it is flagged, the model's label and its
    probability."""

    audited: np.ndarray  # bool per row: False for rows of classes too small to cross-validate
    label_quality: np.ndarray
    label_issue: np.ndarray
    predicted_label: list[str | None]
    predicted_probability: np.ndarray
    method: str
    cross_validated_accuracy: float
    classes: list[str]
    issues_found: int  # what cleanlab flagged before the cap


def find_label_issues(features: np.ndarray, labels: np.ndarray, model: str = "auto", folds: int = 5,
                      seed: int = 0, *, thumbnails: np.ndarray | None = None, max_minutes: float = 15.0,
                      device: str = "auto", max_flagged: int | None = DEFAULT_MAX_FLAGGED,
                      progress: Callable[[int, int], None] | None = None) -> LabelNoiseFindings:
    """Out-of-sample probabilities by ``folds``-fold cross-validation, then cleanlab's scores and flags.

    ``features`` feed the HOG models, ``thumbnails`` (uint8 48x48 faces) the CNN, which gets
    ``max_minutes`` on ``device``. Of cleanlab's flags the ``max_flagged`` lowest label qualities
    are kept (None: all).
    """
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    if model == "auto":
        model = "cnn" if len(labels) >= _CNN_FROM and thumbnails is not None else "hog-logreg"
    if model not in NOISE_MODELS:
        raise OptionError(f"unknown noise model {model!r}", f"use one of {', '.join(NOISE_MODELS)}")
    if model == "cnn" and thumbnails is None:
        raise OptionError("the cnn noise model needs the face thumbnails", "pass thumbnails=")
    counts = pd.Series(labels).value_counts()
    classes = [label for label in CANONICAL_LABELS if counts.get(label, 0) >= folds]
    audited = np.isin(labels, classes)
    quality = np.full(len(labels), np.nan, np.float32)
    issue = np.zeros(len(labels), bool)
    predicted: list[str | None] = [None] * len(labels)
    confidence = np.full(len(labels), np.nan, np.float32)
    budget = f", {max_minutes:g} minutes" if model == "cnn" else ""
    method = (f"{NOISE_MODELS[model]}, {folds}-fold cross-validated out-of-sample probabilities "
              f"(seed {seed}{budget}), cleanlab confident learning")
    if len(classes) < 2:
        return LabelNoiseFindings(audited & False, quality, issue, predicted, confidence, method, float("nan"),
                                  classes, 0)
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] for label in labels[audited]])
    if model == "cnn":
        from fercurate.audit.noise_cnn import (
            cnn_out_of_fold_probabilities,  # torch: imported only when used
        )

        probabilities = cnn_out_of_fold_probabilities(
            thumbnails[audited], targets, len(classes), folds=folds, seed=seed, max_minutes=max_minutes,
            device=device, progress=progress)
    else:
        probabilities = _sklearn_out_of_fold_probabilities(model, features[audited], targets, folds, seed)
    quality[audited] = get_label_quality_scores(targets, probabilities)
    found = cleanlab_issues(targets, probabilities, filter_by="prune_by_noise_rate")
    rows = np.flatnonzero(audited)
    flagged = rows[found]
    if max_flagged is not None and len(flagged) > max_flagged:
        flagged = flagged[np.argsort(quality[flagged], kind="stable")[:max_flagged]]
    issue[flagged] = True
    best = probabilities.argmax(axis=1)
    for row, guess in zip(rows, best):
        predicted[row] = classes[guess]
    confidence[audited] = probabilities.max(axis=1)
    accuracy = float((best == targets).mean())
    return LabelNoiseFindings(audited, quality, issue, predicted, confidence, method, accuracy, classes,
                              int(found.sum()))


def _sklearn_out_of_fold_probabilities(model: str, features: np.ndarray, targets: np.ndarray, folds: int,
                                       seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a HOG model (see :func:`_model`), stratified folds."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(_model(model, seed), features, targets, method="predict_proba", n_jobs=-1,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=seed))


def ferplus_agreement(votes: list[Any], labels: list[str], label_sources: list[str], flagged: np.ndarray,
                      label_quality: np.ndarray, depths: tuple[int, ...] = PRECISION_DEPTHS) -> dict[str, Any] | None:
    """How often the FER+ crowd disputes the labels the audit doubts: its flags, and the top of its
    ranking (lowest label quality first) at each of ``depths``, against the base rate.

    A label is disputed by the majority when another FER+ category (any of its ten, "unknown" and
    "not a face" included) got more votes than it, and by a strict majority when another category
    got more than half the votes. A check of the audit itself, so FER+ is never an input to the
    ranking. None when no row has FER+ votes; meaningless (and said so) when the labels already come
    from FER+.
    """
    with_votes = np.array([bool(vote) for vote in votes])
    if not with_votes.any():
        return None
    if any(source.startswith("ferplus") for source, has in zip(label_sources, with_votes) if has):
        return {"note": "labels already come from FER+ (ingested with a FER+ label mode): no independent check"}
    majority = np.zeros(len(labels), bool)
    strict = np.zeros(len(labels), bool)
    for i in np.flatnonzero(with_votes):
        counts = dict(votes[i])
        own = counts.get(labels[i], 0.0)
        others = [count for name, count in counts.items() if name != labels[i]]
        majority[i] = max(others, default=0.0) > own
        strict[i] = max(others, default=0.0) > sum(counts.values()) / 2

    def rate(disputed: np.ndarray, rows: np.ndarray) -> float | None:
        return round(float(disputed[rows].mean()), 4) if len(rows) else None

    flagged_rows = np.flatnonzero(with_votes & flagged)
    other_rows = np.flatnonzero(with_votes & ~flagged)
    ranked = np.flatnonzero(with_votes & ~np.isnan(label_quality))
    ranked = ranked[np.argsort(label_quality[ranked], kind="stable")]
    every = np.flatnonzero(with_votes)
    return {
        "rows_with_votes": int(with_votes.sum()),
        "flagged_with_votes": len(flagged_rows),
        "ferplus_disagrees_when_flagged": rate(majority, flagged_rows),
        "ferplus_disagrees_when_not_flagged": rate(majority, other_rows),
        "base_rate": {"majority": rate(majority, every), "strict_majority": rate(strict, every)},
        "precision_at": [{"top": depth, "majority": rate(majority, ranked[:depth]),
                          "strict_majority": rate(strict, ranked[:depth])}
                         for depth in depths if depth <= len(ranked)],
    }


def ferplus_precision_table(check: dict[str, Any]) -> pd.DataFrame:
    """The FER+ check (see :func:`ferplus_agreement`) as one table: a row per ranking depth, the
    flagged set, then the base rate."""
    rows = [{"images": f"top {entry['top']:,}", "majority disputes": entry["majority"],
             "strict majority disputes": entry["strict_majority"]} for entry in check["precision_at"]]
    rows.append({"images": f"flagged ({check['flagged_with_votes']:,})",
                 "majority disputes": check["ferplus_disagrees_when_flagged"], "strict majority disputes": None})
    rows.append({"images": f"all ({check['rows_with_votes']:,}, base rate)",
                 "majority disputes": check["base_rate"]["majority"],
                 "strict majority disputes": check["base_rate"]["strict_majority"]})
    return pd.DataFrame(rows)
