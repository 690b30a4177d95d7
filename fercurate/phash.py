"""The 64-bit perceptual hash (pHash) every stage compares faces with: the audit's near duplicates,
the demo's guarantee that no two drawn faces collide, and the synthesis filter's near copies.

One definition, so the three agree bit for bit. It imports nothing from fercurate, so every stage
(sources included) may use it.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_INPUT = 32  # the DCT of a 32x32 image; its 8x8 lowest frequencies make the 64 bits


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix.astype(np.float32)


_LOW_FREQUENCIES = _dct_matrix(HASH_INPUT)[:8]


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit pHash of each 32x32 image: signs of the 8x8 lowest DCT frequencies against their
    median, computed for all images at once."""
    low = (_LOW_FREQUENCIES @ images @ _LOW_FREQUENCIES.T).reshape(len(images), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def image_hashes(images: np.ndarray) -> np.ndarray:
    """uint64 pHash of each ``(N, H, W)`` uint8 gray image, shrunk to 32x32 with INTER_AREA as the
    audit does."""
    small = images if images.shape[1:] == (HASH_INPUT, HASH_INPUT) else np.stack(
        [cv2.resize(image, (HASH_INPUT, HASH_INPUT), interpolation=cv2.INTER_AREA) for image in images])
    return perceptual_hashes(small.astype(np.float32))


def hamming_distances(hashes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Hamming distances between every hash and every other, ``(len(hashes), len(others))``."""
    return np.bitwise_count(hashes[:, None] ^ others[None, :])
