"""Evaluation of a trained classifier: the numbers a FER paper reports, and the ones it should.

Accuracy alone flatters a model on FER2013 (happiness is a quarter of the data, disgust 1.5%), so
every evaluation also gives macro-F1, balanced accuracy (mean per-class recall), per-class
precision / recall / F1 / support, the confusion matrix, and the expected calibration error (are
the softmax confidences honest?). With ``groups`` the same metrics are given per group value, e.g.
per source or per demographic value, which is where a curated dataset should prove itself.

The metric functions are small and pure numpy, working from a confusion matrix (rows: true class,
columns: predicted class). Classes without any true example in the evaluated set are left out of
the macro averages (as scikit-learn's ``balanced_accuracy_score`` does; for macro-F1 this equals
scikit-learn's ``f1_score(average="macro", labels=<classes present>)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fercurate.train.data import Normalization

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: entry [t, p] is how many faces of class t were predicted p."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy(matrix: np.ndarray) -> float:
    """Share of faces predicted correctly."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that have true examples."""
    scores = per_class_scores(matrix)
    present = scores["support"] > 0
    return float(scores["f1"][present].mean()) if present.any() else 0.0


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Unweighted mean recall over the classes that have true examples."""
    scores = per_class_scores(matrix)
    present = scores["support"] > 0
    return float(scores["recall"][present].mean()) if present.any() else 0.0


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., 2017): faces are put into ``bins`` equal-width bins by confidence (the top
    probability; bin b holds b/bins < confidence <= (b+1)/bins), and the gaps between each bin's
    accuracy and mean confidence are averaged, weighted by the bin's share of faces."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    which = np.searchsorted(inner_edges, confidence, side="left")
    gap = np.abs(np.bincount(which, weights=correct, minlength=bins)
                 - np.bincount(which, weights=confidence, minlength=bins))
    return float(gap.sum() / len(confidence))


def metrics_from_probabilities(probabilities: np.ndarray, y_true: np.ndarray,
                               class_names: Sequence[str]) -> dict[str, Any]:
    """Every metric of one set of predictions (class probabilities ``(N, C)``, true indices ``(N,)``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    matrix = confusion_matrix(y_true, probabilities.argmax(axis=1), len(class_names))
    scores = per_class_scores(matrix)
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "ece": expected_calibration_error(probabilities, y_true),
        "per_class": {name: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                             "f1": float(scores["f1"][i]), "support": int(scores["support"][i])}
                      for i, name in enumerate(class_names)},
        "confusion_matrix": matrix.tolist(),
    }


def _resampled_scores(y_true: np.ndarray, y_pred: np.ndarray, picks: np.ndarray,
                      num_classes: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of each resampling ``picks`` (rows of face indices), each scored from
    its own confusion matrix (all built at once with one bincount)."""
    resamples, count = picks.shape
    cells = (np.arange(resamples)[:, None] * num_classes**2 + y_true[picks] * num_classes + y_pred[picks]).ravel()
    matrices = np.bincount(cells, minlength=resamples * num_classes**2).reshape(resamples, num_classes, num_classes)
    support, predicted = matrices.sum(axis=2), matrices.sum(axis=1)
    hits = np.diagonal(matrices, axis1=1, axis2=2)
    f1 = np.divide(2 * hits, support + predicted, out=np.zeros(hits.shape), where=(support + predicted) > 0)
    present = support > 0
    return {"accuracy": hits.sum(axis=1) / count,
            "macro_f1": np.where(present, f1, 0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)}


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, *, resamples: int = 500,
                        seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy and macro-F1 over ``resamples`` resamplings of the faces."""
    count = len(y_true)
    if count == 0:
        return {"accuracy": (0.0, 0.0), "macro_f1": (0.0, 0.0)}
    picks = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    return {name: _percentile_interval(values, level)
            for name, values in _resampled_scores(y_true, y_pred, picks, num_classes).items()}


def paired_bootstrap_difference(y_true: np.ndarray, y_pred: np.ndarray, y_baseline: np.ndarray, num_classes: int, *,
                                resamples: int = 1000, seed: int = 0,
                                level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of (score of ``y_pred``) - (score of ``y_baseline``) for accuracy and
    macro-F1, resampling the same faces for both: how much of a difference between two models on
    one test set the test sample alone could produce (not the noise of training them)."""
    count = len(y_true)
    picks = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    ours = _resampled_scores(y_true, y_pred, picks, num_classes)
    theirs = _resampled_scores(y_true, y_baseline, picks, num_classes)
    return {name: _percentile_interval(ours[name] - theirs[name], level) for name in ours}


def group_report(probabilities: np.ndarray, y_true: np.ndarray, values: Sequence[Any], *, min_rows: int = 20,
                 seed: int = 0) -> dict[str, Any]:
    """Per value of one grouping (e.g. perceived gender): faces, accuracy and macro-F1 with 95%
    bootstrap intervals, and the largest gap between two values with at least ``min_rows`` faces
    (``unknown`` is reported but never part of a gap: it is not a group of people)."""
    values = np.asarray(values, dtype=object)
    y_pred = probabilities.argmax(axis=1)
    num_classes = probabilities.shape[1]
    table = {}
    for value in sorted(set(values.tolist()), key=str):
        chosen = values == value
        matrix = confusion_matrix(y_true[chosen], y_pred[chosen], num_classes)
        intervals = bootstrap_intervals(y_true[chosen], y_pred[chosen], num_classes, seed=seed)
        table[str(value)] = {"n": int(chosen.sum()), "accuracy": accuracy(matrix), "accuracy_ci": intervals["accuracy"],
                             "macro_f1": macro_f1(matrix), "macro_f1_ci": intervals["macro_f1"]}
    compared = {value: facts for value, facts in table.items() if value != "unknown" and facts["n"] >= min_rows}
    gaps = {}
    for metric in ("accuracy", "macro_f1"):
        if len(compared) >= 2:
            best = max(compared, key=lambda value: compared[value][metric])
            worst = min(compared, key=lambda value: compared[value][metric])
            gaps[metric] = {"gap": compared[best][metric] - compared[worst][metric], "best": best, "worst": worst}
    return {"values": table, "largest_gap": gaps, "min_rows": min_rows}


def _as_model_input(images: np.ndarray | torch.Tensor, normalization: Normalization | None) -> torch.Tensor:
    """uint8 ``(N, 48, 48)`` (normalised here) or already normalised float ``(N, 1, 48, 48)``."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        if normalization is None:
            raise ValueError("uint8 images need the normalization the model was trained with")
        return normalization.apply(images)
    if images.ndim != 4:
        raise ValueError(f"float images must be normalised (N, 1, H, W), got {tuple(images.shape)}")
    return images.float()


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray | torch.Tensor,
                          normalization: Normalization | None = None, tta_flip: bool = False,
                          batch_size: int = 512, device: str | torch.device | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, C)`` of ``model`` in eval mode. With ``tta_flip`` each face is
    also classified mirrored and the two probability vectors are averaged."""
    parameter = next(model.parameters())
    device = torch.device(device) if device is not None else parameter.device
    was_training = model.training
    model.eval()
    inputs = _as_model_input(images, normalization)
    if len(inputs) == 0:
        raise ValueError("no images to classify")
    outputs = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        probabilities = torch.softmax(model(x).float(), dim=1)
        if tta_flip:
            flipped = x.flip(-1).contiguous(memory_format=torch.channels_last)
            probabilities = (probabilities + torch.softmax(model(flipped).float(), dim=1)) / 2
        outputs.append(probabilities.cpu())
    model.train(was_training)
    return torch.cat(outputs).double().numpy()


def evaluate(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray | Sequence[int],
             class_names: Sequence[str], tta_flip: bool = False,
             groups: Mapping[str, np.ndarray | Sequence[Any]] | None = None,
             normalization: Normalization | None = None, batch_size: int = 512,
             device: str | torch.device | None = None, predictions: bool = False) -> dict[str, Any]:
    """All metrics of ``model`` on ``images`` with true class indices ``labels`` (see
    :func:`metrics_from_probabilities`), plus, for every grouping ``name -> values aligned with
    images``, the same metrics per value under ``result["groups"][name][value]``; with
    ``predictions`` also the true and the predicted class index of every face (``true_labels``,
    ``predictions``: for paired comparisons).

    ``images`` are uint8 ``(N, 48, 48)`` (then ``normalization`` is required) or normalised float
    ``(N, 1, 48, 48)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = predict_probabilities(model, images, normalization, tta_flip, batch_size, device)
    result = metrics_from_probabilities(probabilities, labels, class_names)
    result["class_names"] = list(class_names)
    result["tta_flip"] = tta_flip
    if predictions:
        result["true_labels"] = labels.tolist()
        result["predictions"] = probabilities.argmax(axis=1).tolist()
    if groups:
        result["groups"] = {}
        for name, values in groups.items():
            values = np.asarray(values, dtype=object)
            if len(values) != len(labels):
                raise ValueError(f"group {name!r} has {len(values)} values for {len(labels)} images")
            result["groups"][name] = {
                str(value): metrics_from_probabilities(probabilities[values == value], labels[values == value],
                                                       class_names)
                for value in sorted(set(values.tolist()), key=str)}
        result["group_report"] = {name: group_report(probabilities, labels, values) for name, values in groups.items()}
    return result


def plot_confusion(matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | Path, title: str = "Confusion matrix") -> Path:
    """Write the confusion matrix as a PNG: cells coloured by row share (recall), labelled with the
    count and the row percentage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.int64)
    shares = _safe_divide(counts, np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape))
    size = max(4.0, 0.8 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for t in range(counts.shape[0]):
        for p in range(counts.shape[1]):
            axes.text(p, t, f"{counts[t, p]}\n{shares[t, p]:.0%}", ha="center", va="center", fontsize=8,
                      color="white" if shares[t, p] > 0.5 else "black")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
