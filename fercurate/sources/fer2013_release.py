"""The original FER2013 release as a compact table: which face each ``fer2013.csv`` row is.

FER+ (``fer2013new.csv``) labels rows of the original ``fer2013.csv`` by position. Users hold
either that CSV (possibly a subset, a reordered or an edited copy) or the Kaggle image-folder
release, which has no row numbers. The table shipped in ``data/fer2013_release.npz`` (built by
``scripts/build_fer2013_release.py``, provenance in ``data/README.md``) holds, per release row:

- ``usage``: 0 Training, 1 PublicTest, 2 PrivateTest (from FER+'s ``Usage`` column);
- ``key``: the image-folder file as ``<class>/<stem>`` (``angry/Training_10118481``), ``b""`` where
  no image-folder file is that row (176 rows);
- ``phash``: the 64-bit DCT perceptual hash (:func:`phash64`) of the image-folder JPEG of that row;
  ``has_phash`` is False where there is none.

Invariant: a face's pHash is within :data:`MATCH_DISTANCE` bits of the release row it is. JPEG
re-encoding of the original pixels moves at most a few bits (measured on the first 300 rows: see
``data/README.md``), while distinct faces are typically ~32 bits apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import cv2
import numpy as np

USAGES = ("Training", "PublicTest", "PrivateTest")
#: Largest pHash distance (bits of 64) at which two 48x48 faces count as the same image.
MATCH_DISTANCE = 4
_SIDE = 48
_BITS = 8  # an 8x8 block of the lowest DCT frequencies gives 64 bits


def _dct_basis(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the orthonormal DCT-II matrix on ``n`` points."""
    frequencies = np.arange(k)[:, None]
    samples = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * samples + 1) * frequencies / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


_BASIS = _dct_basis(_SIDE, _BITS)
_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64))[::-1]


def phash64(images: np.ndarray) -> np.ndarray:
    """DCT perceptual hashes (uint64) of a stack of gray faces (N x H x W, any size: others than
    48x48 are resized first). Bit set = that low-frequency coefficient is above the block's median
    (DC excluded from the median). Vectorised: one batched matrix product for the whole stack."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.shape[1:] != (_SIDE, _SIDE):
        images = np.stack([cv2.resize(image, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA) for image in images])
    coefficients = np.einsum("ki,nij,lj->nkl", _BASIS, images.astype(np.float64), _BASIS).reshape(len(images), 64)
    median = np.median(coefficients[:, 1:], axis=1, keepdims=True)
    return ((coefficients > median).astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distances between uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int16)


@dataclass(frozen=True)
class ReleaseTable:
    """Per row of the original ``fer2013.csv``: usage code, image-folder key and pHash."""

    usage: np.ndarray  # uint8, index into USAGES
    key: np.ndarray  # bytes, b"" where no image-folder file is this row
    phash: np.ndarray  # uint64
    has_phash: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.usage)

    def rows_of_keys(self) -> dict[str, int]:
        """Image-folder key (``<class>/<stem>``) -> release row."""
        return {key.decode(): row for row, key in enumerate(self.key.tolist()) if key}

    def nearest(self, hashes: np.ndarray, usages: np.ndarray, exclude: np.ndarray,
                block: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """For each hash, the release row nearest to it among rows of the same usage that have a
        pHash and are not ``exclude``d (bool per release row), and whether that nearest row is
        unique (no other row at the same distance). Row -1 where none is within
        :data:`MATCH_DISTANCE`. Vectorised XOR + popcount, in blocks of ``block`` queries."""
        best = np.full(len(hashes), -1, dtype=np.int64)
        unique = np.zeros(len(hashes), dtype=bool)
        for code in range(len(USAGES)):
            candidates = np.flatnonzero((self.usage == code) & self.has_phash & ~exclude)
            queries = np.flatnonzero(usages == code)
            if not len(candidates):
                continue
            for start in range(0, len(queries), block):
                chunk = queries[start:start + block]
                distances = hamming(hashes[chunk, None], self.phash[None, candidates])
                nearest = distances.min(axis=1)
                within = nearest <= MATCH_DISTANCE
                best[chunk[within]] = candidates[distances.argmin(axis=1)[within]]
                unique[chunk] = (distances == nearest[:, None]).sum(axis=1) == 1
        return best, unique


@cache
def load_release() -> ReleaseTable:
    """The table shipped with fercurate (see ``data/README.md`` for how it was built)."""
    with resources.files("fercurate.sources").joinpath("data/fer2013_release.npz").open("rb") as handle:
        arrays = np.load(handle)
        return ReleaseTable(arrays["usage"], arrays["key"], arrays["phash"], arrays["has_phash"])
