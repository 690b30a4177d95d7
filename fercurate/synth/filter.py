"""The filter a synthetic face passes before it is kept.

1. Near copy: its 64-bit pHash is compared with every real training face's (XOR + popcount, in
   blocks: no Python loop over pairs); the pixel-space mean |difference| (0..255, at 48x48) is then
   measured against its pHash-nearest real face and its parent, the smaller kept (a full pixel
   nearest-neighbour search over all pairs would cost N x M x 2,304 operations). A face is a near copy when both the pHash
   distance is at most ``max_hamming`` and the pixel distance is below ``min_pixel_distance``
   (perceptually the same *and* numerically close). Both distances are recorded.
2. Judge (optional): a ``best.pt`` from ``fercurate train`` gives the probability of the intended
   label; below ``min_judge_probability`` the face is rejected. The probability is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, Field

from fercurate.phash import image_hashes

REJECT_NEAR_COPY = "near copy of a real training face"
REJECT_JUDGE = "judge probability below threshold"


class FilterOptions(BaseModel):
    """Thresholds of the filter."""

    max_hamming: int = Field(4, ge=0, le=64, description="pHash bits: at most this many differ -> candidate copy")
    min_pixel_distance: float = Field(3.0, ge=0, description="mean |pixel difference| below this -> copy")
    judge: Path | None = None
    min_judge_probability: float = Field(0.2, ge=0, le=1)
    block: int = Field(256, ge=1, description="queries per block of the pHash comparison")


@dataclass
class FilterScores:
    """Per synthetic face: the scores and why it was rejected (None = kept)."""

    hamming: np.ndarray  # int16
    pixel_distance: np.ndarray  # float32
    judge_probability: np.ndarray  # float32, NaN without a judge
    reason: np.ndarray  # object


def nearest(queries: np.ndarray, reference: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Index and Hamming distance of each query's pHash-nearest reference hash (XOR + popcount over
    a block of queries against all references at once)."""
    index = np.empty(len(queries), np.int64)
    distance = np.empty(len(queries), np.int16)
    for start in range(0, len(queries), block):
        d = np.bitwise_count(queries[start:start + block, None] ^ reference[None, :])
        index[start:start + block] = best = d.argmin(axis=1)
        distance[start:start + block] = d[np.arange(len(best)), best]
    return index, distance


def score(images: np.ndarray, real: np.ndarray, parents: np.ndarray, labels: np.ndarray,
          options: FilterOptions, real_hashes: np.ndarray | None = None) -> FilterScores:
    """Scores of synthetic ``images`` ``(N, S, S)`` against ``real`` training faces ``(M, S, S)``
    (the same thumbnail size, see :func:`thumbnails`); ``parents`` indexes ``real`` (-1 for none);
    ``labels`` are the intended labels."""
    real_hashes = image_hashes(real) if real_hashes is None else real_hashes
    index, hamming = nearest(image_hashes(images), real_hashes, options.block)
    compare = np.stack([index, np.where(parents >= 0, parents, index)], axis=1)
    pixel = np.empty(len(images), np.float32)
    for start in range(0, len(images), options.block):
        block = slice(start, start + options.block)
        difference = images[block, None].astype(np.int16) - real[compare[block]].astype(np.int16)
        pixel[block] = np.abs(difference).mean(axis=(2, 3)).min(axis=1)
    reason = np.full(len(images), None, dtype=object)
    reason[(hamming <= options.max_hamming) & (pixel < options.min_pixel_distance)] = REJECT_NEAR_COPY
    probability = np.full(len(images), np.nan, np.float32)
    if options.judge is not None:
        probability = judge_probabilities(options.judge, images, labels)
        reason[_unset(reason) & (probability < options.min_judge_probability)] = REJECT_JUDGE
    return FilterScores(hamming, pixel, probability, reason)


def _unset(values: np.ndarray) -> np.ndarray:
    """Elementwise ``value is None`` of an object array."""
    return np.equal(values, None)


THUMBNAIL = 48


def thumbnails(images: list[np.ndarray]) -> np.ndarray:
    """``(N, 48, 48)`` uint8 gray thumbnails: the common size the filter compares faces at."""
    out = np.empty((len(images), THUMBNAIL, THUMBNAIL), np.uint8)
    for i, image in enumerate(images):
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        out[i] = gray if gray.shape == (THUMBNAIL, THUMBNAIL) else cv2.resize(gray, (THUMBNAIL, THUMBNAIL),
                                                                                interpolation=cv2.INTER_AREA)
    return out


def judge_probabilities(checkpoint: Path, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For 48x48 thumbnails, the classifier's probability of each face's intended label (0 for a label it does not know)."""
    from fercurate.errors import OptionError
    from fercurate.train.evaluate import predict_probabilities
    from fercurate.train.loop import load_classifier

    if not Path(checkpoint).is_file():
        raise OptionError(f"--judge {checkpoint} does not exist", "give the best.pt of a `fercurate train` run")
    model, meta = load_classifier(checkpoint)
    probabilities = predict_probabilities(model, images, meta["normalization"])
    column = {name: i for i, name in enumerate(meta["class_names"])}
    position = np.array([column.get(label, -1) for label in labels])
    picked = probabilities[np.arange(len(images)), np.maximum(position, 0)]
    return np.where(position >= 0, picked, 0.0).astype(np.float32)
