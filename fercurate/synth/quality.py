"""The numbers that say how good a face generator is: pure numpy metric math, no models.

A generator that draws faces for rebalancing must be judged on four questions, per class:

- **Are they the intended expression?** Classification accuracy score (CAS, Ravuri & Vinyals,
  2019): the share of generated faces the reference classifier, trained on real faces, assigns to
  the intended label. Computed by :mod:`fercurate.train.generator_quality`; here only stored.
- **Do they look like real faces of that class, and cover them?** :func:`frechet_distance` and
  :func:`precision_recall` (k-NN manifolds, Kynkaanniemi et al., 2019) between generated and real
  training faces, in the reference classifier's penultimate-layer feature space. In-domain
  features: ImageNet Inception weights cannot be downloaded here, and are a poor judge of 48x48
  gray faces anyway.
- **Are they copies?** :func:`nearest_real_distances`: each sample's nearest real training face and
  the mean |pixel difference| to it (0..255, the filter's scale), plus how many the near-copy
  filter (:mod:`fercurate.synth.filter`) rejects.
- **Are they varied?** :func:`within_class_diversity`: the mean L2 distance between random pairs of
  faces of one class; a collapsed generator draws the same face again and again.

Every number is also computed for a held-apart set of real faces (the ceiling: what real faces
that were not trained on score), stored in :class:`QualityReport` as ``ceiling``.

Invariants (tested): the Frechet distance of a set with itself is 0; precision and recall of a set
with itself are 1; a sample that is a copy of a training face has nearest-real distance 0 and that
face's index; a set of one face repeated has diversity 0. Pairwise work is done in blocks of
matrix products (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``), never in a Python loop over pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Pixels of a face are compared on this scale by :func:`within_class_diversity`.
_PIXEL_SCALE = 255.0
#: Slack on the k-NN radius comparison: the matrix-product identity leaves a rounding error of
#: about 1e-16 of the squared norms, which must not decide whether a duplicate point is covered.
_RADIUS_SLACK = 1e-9
#: Floating-point numbers (float64) held at once by one block of pairwise distances.
_BLOCK_VALUES = 4_000_000


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the FID formula, Heusel et al., 2017).

    ``tr (S_a S_b)^(1/2)`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric ``S_a^(1/2) S_b S_a^(1/2)`` (similar to ``S_a S_b``, so the same eigenvalues): with
    ``eigh`` this needs no ``sqrtm``, no eps on a singular covariance (fewer faces than feature
    dimensions is the usual case per class) and no discarding of imaginary parts. Both sets need at
    least 2 rows. The result is clipped at 0; a set with itself gives 0 up to about 1e-8 of
    ``tr S``.
    """
    a, b = _features(features_a), _features(features_b)
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Frechet distance needs two sets of >= 2 rows of equal width, got {a.shape} and {b.shape}")
    covariance_a, covariance_b = (np.atleast_2d(np.cov(features, rowvar=False)) for features in (a, b))
    root_a = _psd_root(covariance_a)
    product = root_a @ covariance_b @ root_a
    trace_of_root = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    distance = mean_gap @ mean_gap + np.trace(covariance_a) + np.trace(covariance_b) - 2 * trace_of_root
    return float(max(distance, 0.0))


def _psd_root(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (negative rounding clipped)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _features(features: np.ndarray) -> np.ndarray:
    """``features`` as float64 ``(N, D)``."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {array.shape}")
    return array


def _squared_distances(queries: np.ndarray, reference: np.ndarray, reference_norms: np.ndarray) -> np.ndarray:
    """``|q - r|^2`` for every pair of a block of ``queries`` and all of ``reference`` (clipped at 0)."""
    query_norms = np.einsum("ij,ij->i", queries, queries)
    return np.maximum(query_norms[:, None] + reference_norms[None, :] - 2 * queries @ reference.T, 0)


def _rows_per_block(columns: int) -> int:
    return max(1, _BLOCK_VALUES // max(columns, 1))


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each point to its ``k``-th nearest neighbour among the others (itself
    excluded: a point at distance 0 from itself is not its own neighbour)."""
    norms = np.einsum("ij,ij->i", points, points)
    radii = np.empty(len(points))
    step = _rows_per_block(len(points))
    for start in range(0, len(points), step):
        distances = _squared_distances(points[start:start + step], points, norms)
        rows = np.arange(len(distances))
        distances[rows, start + rows] = np.inf
        radii[start:start + step] = np.partition(distances, k - 1, axis=1)[:, k - 1]
    return radii


def _covered_share(queries: np.ndarray, reference: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``queries`` inside at least one ball around a ``reference`` point (squared radii)."""
    norms = np.einsum("ij,ij->i", reference, reference)
    covered = np.empty(len(queries), bool)
    step = _rows_per_block(len(reference))
    for start in range(0, len(queries), step):
        block = queries[start:start + step]
        slack = _RADIUS_SLACK * (np.einsum("ij,ij->i", block, block)[:, None] + norms[None, :])
        inside = _squared_distances(block, reference, norms) <= radii[None, :] + slack
        covered[start:start + step] = inside.any(axis=1)
    return float(covered.mean())


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) of ``fake_features`` against
    ``real_features`` (both ``(N, D)``). Each set's manifold is the union of balls around its points
    with the distance to the point's ``k``-th nearest other point as radius. Precision: the share of
    fake points inside the real manifold (are the fakes realistic?); recall: the share of real
    points inside the fake manifold (do the fakes cover the real variety?). Both sets need more
    than ``k`` points."""
    real, fake = _features(real_features), _features(fake_features)
    if k < 1 or len(real) <= k or len(fake) <= k or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall with k={k} needs two sets of more than k rows of equal width, "
                         f"got {real.shape} and {fake.shape}")
    precision = _covered_share(fake, real, _knn_radii(real, k))
    recall = _covered_share(real, fake, _knn_radii(fake, k))
    return precision, recall


def nearest_real_distances(samples: np.ndarray, real: np.ndarray, *, block: int = 256,
                           real_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For uint8 faces ``samples`` ``(N, H, W)``: the index into ``real`` ``(M, H, W)`` of each one's
    nearest real face, and the mean |pixel difference| (0..255) to it.

    Definition: the nearest face is chosen by L2 pixel distance (one float32 matrix product per
    block of ``block`` samples x ``real_block`` real faces, on pixels centred at 128 to keep the
    rounding small); the distance reported is the exact mean absolute difference to that face, the
    scale of the filter's ``min_pixel_distance``. It is therefore an upper bound of the smallest
    mean |difference| over all real faces, equal to it (0) for an exact copy. Memory is bounded by
    the blocks (a few tens of MB), not by N x M: FER2013's 28,709 training faces against 10,000
    samples is about 6.6e11 multiply-adds, about a minute on two cores.
    """
    if samples.shape[1:] != real.shape[1:] or len(real) == 0:
        raise ValueError(f"samples {samples.shape} and real faces {real.shape} must be non-empty sets of one size")
    flat_samples, flat_real = samples.reshape(len(samples), -1), real.reshape(len(real), -1)
    best = np.full(len(samples), np.inf, np.float32)
    index = np.zeros(len(samples), np.int64)
    for real_start in range(0, len(real), real_block):
        chunk = flat_real[real_start:real_start + real_block].astype(np.float32) - 128
        chunk_norms = np.einsum("ij,ij->i", chunk, chunk)
        for start in range(0, len(samples), block):
            queries = flat_samples[start:start + block].astype(np.float32) - 128
            distances = np.einsum("ij,ij->i", queries, queries)[:, None] + chunk_norms[None, :] - 2 * queries @ chunk.T
            nearest = distances.argmin(axis=1)
            value = distances[np.arange(len(nearest)), nearest]
            closer = value < best[start:start + block]
            best[start:start + block][closer] = value[closer]
            index[start:start + block][closer] = real_start + nearest[closer]
    distance = np.empty(len(samples), np.float32)
    for start in range(0, len(samples), block):
        difference = flat_samples[start:start + block].astype(np.int16) - flat_real[index[start:start + block]]
        distance[start:start + block] = np.abs(difference).mean(axis=1)
    return index, distance


def within_class_diversity(images: np.ndarray, *, pairs: int = 2000, seed: int = 0) -> float:
    """Mean L2 distance between ``pairs`` random pairs of distinct faces (different indices) of one
    class, uint8 ``(N, H, W)``, on the 0..1 pixel scale: ``|a - b|_2 / 255`` over all pixels. At
    48x48 this is ``48 / 255`` times the RMS pixel difference (0..255): real FER2013 faces of one
    class give about 16.4 (RMS about 87 gray levels); a collapsed generator about 2-3 (the
    measure of the STACK.md generator probe). Needs at least 2 faces."""
    if len(images) < 2:
        raise ValueError(f"diversity needs at least 2 faces, got {len(images)}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), size=pairs)
    second = rng.integers(0, len(images) - 1, size=pairs)
    second += second >= first  # a uniform index other than first
    flat = images.reshape(len(images), -1)
    total = 0.0
    step = _rows_per_block(flat.shape[1])
    for start in range(0, pairs, step):
        difference = flat[first[start:start + step]].astype(np.float32) - flat[second[start:start + step]]
        total += float(np.sqrt(np.einsum("ij,ij->i", difference, difference, dtype=np.float64)).sum())
    return total / pairs / _PIXEL_SCALE


@dataclass
class ClassQuality:
    """The quality numbers of one class's faces (or of all classes pooled, label ``all``). None
    where a number cannot be computed: too few faces, or a label the classifier does not know."""

    label: str
    count: int
    classification_accuracy: float | None = None  # share the reference classifier assigns to ``label``
    frechet_distance: float | None = None  # to the real training faces of ``label``, in feature space
    precision: float | None = None  # share of faces inside the real faces' k-NN manifold
    recall: float | None = None  # share of real faces inside these faces' k-NN manifold
    nearest_real_median: float | None = None  # mean |pixel difference| (0..255) to the nearest training face
    nearest_real_p5: float | None = None  # its 5th percentile: the closest few
    near_copies: int = 0  # rejected by the filter as near copies of a training face
    near_copy_share: float | None = None
    diversity: float | None = None  # within-class pairwise L2 (0..1 pixels), see within_class_diversity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = (("class", "label", "{}"), ("faces", "count", "{}"), ("CAS", "classification_accuracy", "{:.3f}"),
            ("FD", "frechet_distance", "{:.2f}"), ("precision", "precision", "{:.3f}"),
            ("recall", "recall", "{:.3f}"), ("NN median", "nearest_real_median", "{:.1f}"),
            ("NN p5", "nearest_real_p5", "{:.1f}"), ("near copies", "near_copies", "{}"),
            ("copy share", "near_copy_share", "{:.3f}"), ("diversity", "diversity", "{:.2f}"))

LEGEND = (
    "CAS: share the reference classifier (trained on real faces) assigns to the intended class. "
    "FD, precision, recall (k-NN manifolds, k={k}): against the real training faces of the class, in the "
    "classifier's penultimate-layer features. NN: mean |pixel difference| (0..255, 48x48) to the nearest "
    "training face (median, 5th percentile). Near copies: rejected by the near-copy filter. Diversity: mean L2 "
    "distance of random pairs within the class (0..1 pixels; real FER2013 about 16, a collapsed generator 2-3); "
    "the all row gives the count-weighted mean of the classes' diversities. Ceiling: the same numbers for "
    "real faces held apart from training."
)


@dataclass
class QualityReport:
    """The quality of one generator's faces per class and over all classes pooled; ``ceiling`` holds
    the same numbers for held-apart real faces (its own ``ceiling`` is None)."""

    generator: str
    classes: list[ClassQuality]
    overall: ClassQuality
    ceiling: QualityReport | None = None
    classifier: str | None = None  # the reference classifier's checkpoint
    k: int = 3  # neighbours of the precision/recall manifolds
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (None for numbers that could not be computed)."""
        return {"generator": self.generator, "classifier": self.classifier, "k": self.k,
                "classes": [quality.to_dict() for quality in self.classes], "overall": self.overall.to_dict(),
                "ceiling": self.ceiling.to_dict() if self.ceiling is not None else None, "notes": self.notes}

    def table(self) -> str:
        """A markdown table: one row per class, then the pooled row."""
        lines = ["| " + " | ".join(title for title, _, _ in _COLUMNS) + " |",
                 "|" + "---|" * len(_COLUMNS)]
        for quality in [*self.classes, self.overall]:
            cells = [("-" if (value := getattr(quality, name)) is None else form.format(value))
                     for _, name, form in _COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The generator's table, the ceiling's table, and what the columns mean."""
        parts = [f"# Quality of {self.generator}", ""]
        if self.classifier:
            parts += [f"Reference classifier: `{self.classifier}`", ""]
        if described := self.notes.get("real_faces_described"):
            parts += ["Real training faces compared in the classifier's features: "
                      + ", ".join(f"{label} {count:,}" for label, count in described.items()), ""]
        parts += [self.table(), ""]
        if self.ceiling is not None:
            parts += [f"## Ceiling: {self.ceiling.generator}", "", self.ceiling.table(), ""]
        parts += [LEGEND.format(k=self.k), ""]
        return "\n".join(parts)
