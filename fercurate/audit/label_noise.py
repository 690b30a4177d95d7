"""Likely mislabelled images, by confident learning on out-of-sample predicted probabilities.

A quick model is trained k times, each time predicting the fold it did not see, so every image's
predicted probabilities are out-of-sample (cleanlab requires this). The model works on HOG
features reduced by PCA; the same reduced features are the embeddings FiftyOne's similarity and
uniqueness use. cleanlab then flags label issues and scores every label's quality.
"""

from __future__ import annotations

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
    "auto": "hog-mlp from 2,000 audited images on, hog-logreg below (an MLP overfits small sets)",
    "hog-mlp": "HOG features (PCA) into a one-hidden-layer MLP (256 units)",
    "hog-logreg": "HOG features (PCA) into multinomial logistic regression",
}
FERPLUS_EMOTIONS = CANONICAL_LABELS  # FER+ vote columns in the same order


_MLP_FROM = 2000


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
    """Per audited row: label quality (0 worst .. 1), whether cleanlab flags it, the model's label."""

    audited: np.ndarray  # bool per row: False for rows of classes too small to cross-validate
    label_quality: np.ndarray
    label_issue: np.ndarray
    predicted_label: list[str | None]
    method: str
    cross_validated_accuracy: float
    classes: list[str]


def find_label_issues(features: np.ndarray, labels: np.ndarray, model: str = "auto", folds: int = 5,
                      seed: int = 0) -> LabelNoiseFindings:
    """Out-of-sample probabilities by ``folds``-fold cross-validation, then cleanlab's flags and scores."""
    import warnings

    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.exceptions import ConvergenceWarning

    if model == "auto":
        model = "hog-mlp" if len(labels) >= _MLP_FROM else "hog-logreg"
    counts = pd.Series(labels).value_counts()
    classes = [label for label in CANONICAL_LABELS if counts.get(label, 0) >= folds]
    audited = np.isin(labels, classes)
    quality = np.full(len(labels), np.nan, np.float32)
    issue = np.zeros(len(labels), bool)
    predicted: list[str | None] = [None] * len(labels)
    method = (f"{NOISE_MODELS[model] if model in NOISE_MODELS else model}, {folds}-fold cross-validated "
              f"out-of-sample probabilities (seed {seed}), cleanlab confident learning")
    if len(classes) < 2:
        return LabelNoiseFindings(audited & False, quality, issue, predicted, method, float("nan"), classes)
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] for label in labels[audited]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probabilities = cross_val_predict(
            _model(model, seed), features[audited], targets, method="predict_proba", n_jobs=-1,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    quality[audited] = get_label_quality_scores(targets, probabilities)
    issue[audited] = cleanlab_issues(targets, probabilities, filter_by="prune_by_noise_rate")
    best = probabilities.argmax(axis=1)
    for row, guess in zip(np.flatnonzero(audited), best):
        predicted[row] = classes[guess]
    accuracy = float((best == targets).mean())
    return LabelNoiseFindings(audited, quality, issue, predicted, method, accuracy, classes)


def ferplus_agreement(votes: list[Any], labels: list[str], label_sources: list[str],
                      flagged: np.ndarray) -> dict[str, Any] | None:
    """How often the audit's flags point at images whose label the FER+ crowd majority disputes.

    A check of the audit itself: if the flags mean something, flagged images disagree with FER+
    far more often than unflagged ones. None when no row has FER+ votes; meaningless (and said
    so) when the labels already come from FER+.
    """
    with_votes = [i for i, vote in enumerate(votes) if vote]
    if not with_votes:
        return None
    if any(label_sources[i].startswith("ferplus") for i in with_votes):
        return {"note": "labels already come from FER+ (ingested with a FER+ label mode): no independent check"}
    disagree = np.zeros(len(labels), bool)
    for i in with_votes:
        emotion_votes = dict(votes[i])
        counts = [emotion_votes.get(emotion, 0.0) for emotion in FERPLUS_EMOTIONS]
        disagree[i] = FERPLUS_EMOTIONS[int(np.argmax(counts))] != labels[i]
    has_votes = np.zeros(len(labels), bool)
    has_votes[with_votes] = True
    flagged_rows = has_votes & flagged
    other_rows = has_votes & ~flagged
    flagged_rate = float(disagree[flagged_rows].mean()) if flagged_rows.any() else float("nan")
    other_rate = float(disagree[other_rows].mean()) if other_rows.any() else float("nan")
    return {
        "rows_with_votes": int(has_votes.sum()),
        "flagged_with_votes": int(flagged_rows.sum()),
        "ferplus_disagrees_when_flagged": round(flagged_rate, 4),
        "ferplus_disagrees_when_not_flagged": round(other_rate, 4),
    }
