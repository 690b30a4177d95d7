"""Per-image quality: brightness, contrast, blur, blank images, face detection, size anomalies,
and the perceptual hash that duplicate search uses.

Face detection is dlib's HOG detector by default (:mod:`fercurate.audit.faces`, run in a process
pool: dlib holds the GIL); on the first 2,000 FER2013 crops it finds 89% of the faces at its default
threshold against 71% for OpenCV's Haar cascade as this module runs it (padded 8 px), and it fires
on 9% of them turned upside down (benchmarks/face_landmarks_benchmark.py). It costs about 1.6 times
the cascade (4,000 FER2013 files on 2 shared cores: 24-27 s against 14-17 s for this whole step).
``face_detector="haar"`` keeps the cascade. The dlib detections (with their 5 landmark points) are kept in the result, so the audit's
``--landmarks`` step reuses them instead of searching again.

Each image is read once (in a thread pool: OpenCV releases the GIL); the per-image work is a
handful of OpenCV calls, and the perceptual hashes of all images are computed together as one
batched DCT.

An image file missing from the workspace is *missing*, not unreadable, and neither kind is measured:
its brightness, contrast and blur stay 0 and no quality flag but ``missing_image`` (or
``unreadable``) is set on it, so one lost file counts once, under its real cause.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from fercurate.audit.faces import DEFAULT_THRESHOLD, FaceLandmarks, find_faces_in_files
from fercurate.errors import AuditError
from fercurate.phash import HASH_INPUT, perceptual_hashes

THUMB = 48  # side of the gray thumbnails kept for hashing, features and contact sheets
#: "Not a face" on a tight crop: dlib finds nothing even at this threshold (its default is -0.3).
#: On the full FER2013 image-folder release, -1.5 / -1.6 / -1.7 alone flag 107 / 64 / 42 of the faces
#: not found at -0.3, of which 54% / 73% / 83% are images FER+ excluded (placeholders, text, icons);
#: -1.6 with the flat-graphic rule below flags 86, 75.6% of them FER+ non-faces (chosen on that data).
NOT_FACE_SCORE = -1.6
#: "Not a face" on any image: this share of its 48x48 thumbnail is flat (a placeholder, an icon,
#: a blank). Real FER2013 faces: median 3%, 99.9th percentile 30%.
GRAPHIC_FLAT_SHARE = 0.4
_CHUNK = 256


class QualityThresholds(BaseModel):
    """When an image counts as blank, blurry, too dark or bright, or oddly sized."""

    blank_std: float = Field(2.0, ge=0, description="pixel standard deviation below which an image is blank")
    blur_variance: float = Field(
        100.0, ge=0, description="variance of the Laplacian (at 48x48) below which an image is blurry")
    dark_mean: float = Field(30.0, ge=0, le=255, description="mean gray level below which an image is too dark")
    bright_mean: float = Field(225.0, ge=0, le=255, description="mean gray level above which it is too bright")
    size_ratio: float = Field(
        4.0, gt=1, description="an image whose area differs from its source's median by this factor is anomalous")
    face_detector: Literal["dlib", "haar"] = Field(
        "dlib", description="dlib's HOG detector (finds more of FER2013's faces) or OpenCV's Haar cascade")
    face_threshold: float = Field(DEFAULT_THRESHOLD, ge=-2, le=2,
                                  description="dlib detector threshold on tight crops (lower: more faces)")
    face_min_neighbors: int = Field(3, ge=1, description="Haar cascade minNeighbors (higher: fewer, surer faces)")
    not_face_score: float = Field(
        NOT_FACE_SCORE, ge=-3, le=0,
        description="dlib threshold on tight crops below which nothing face-like was found: not a face")
    graphic_flat_share: float = Field(
        GRAPHIC_FLAT_SHARE, gt=0, le=1,
        description="share of flat pixels (a neighbour within 1 gray level) above which an image is a graphic")


@dataclass
class QualityResult:
    """Measurements aligned with the input paths (gray thumbnails are THUMB x THUMB)."""

    brightness: np.ndarray
    contrast: np.ndarray
    blur: np.ndarray
    face_detected: np.ndarray
    readable: np.ndarray
    missing: np.ndarray  # the file does not exist (readable is False too)
    thumbnails: np.ndarray
    phash: np.ndarray  # uint64
    flat_share: np.ndarray  # share of thumbnail pixels whose right and lower neighbours are within 1 gray level
    faces: FaceLandmarks | None = None  # dlib's detections on every image, when dlib detected the faces
    # dlib found nothing even at not_face_score (at its stricter frame threshold on larger frames,
    # which searching at -1.6 would fill with background "faces"); None: not searched
    faceless: np.ndarray | None = None


def _detector() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        raise AuditError("OpenCV's bundled Haar cascade is missing",
                         "reinstall opencv-python-headless<5, or audit with --no-faces")
    return cascade


def measure_images(paths: Sequence[str], thresholds: QualityThresholds | None = None,
                   detect_faces: bool = True, progress: Callable[[int], None] | None = None,
                   workers: int | None = None, *,
                   face_progress: Callable[[int], None] | None = None) -> QualityResult:
    """Measure every image in ``paths`` (unreadable ones are marked, not fatal). dlib's face search
    is a second pass over the files, reported to ``face_progress``."""
    thresholds = thresholds or QualityThresholds()
    haar = detect_faces and thresholds.face_detector == "haar"
    count = len(paths)
    brightness = np.zeros(count, np.float32)
    contrast = np.zeros(count, np.float32)
    blur = np.zeros(count, np.float32)
    face = np.zeros(count, bool)
    readable = np.zeros(count, bool)
    missing = np.zeros(count, bool)
    thumbs = np.zeros((count, THUMB, THUMB), np.uint8)
    hash_input = np.zeros((count, HASH_INPUT, HASH_INPUT), np.float32)

    def measure(start: int) -> int:
        cascade = _detector() if haar else None  # one per chunk: detectors are not thread-safe
        stop = min(start + _CHUNK, count)
        for i in range(start, stop):
            if not os.path.isfile(paths[i]):
                missing[i] = True
                continue
            image = cv2.imread(paths[i], cv2.IMREAD_GRAYSCALE)
            if image is None:
                continue
            readable[i] = True
            thumb = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
            thumbs[i] = thumb
            hash_input[i] = cv2.resize(thumb, (HASH_INPUT, HASH_INPUT), interpolation=cv2.INTER_AREA)
            mean, std = cv2.meanStdDev(image)
            brightness[i], contrast[i] = mean[0, 0], std[0, 0]
            blur[i] = cv2.Laplacian(thumb, cv2.CV_32F).var()
            if cascade is not None:
                face[i] = _has_face(cascade, thumb, thresholds.face_min_neighbors)
        return stop - start

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for done in pool.map(measure, range(0, count, _CHUNK)):
            if progress is not None:
                progress(done)
    detections, faceless = None, None
    if detect_faces and not haar:
        detections = find_faces_in_files(paths, threshold=min(thresholds.face_threshold, thresholds.not_face_score),
                                         workers=workers, progress=face_progress)
        faceless = ~detections.found & readable
        face = detections.select(np.arange(count), min_score=thresholds.face_threshold).found & readable
    return QualityResult(brightness, contrast, blur, face, readable, missing, thumbs, perceptual_hashes(hash_input),
                         flat_shares(thumbs), detections, faceless)


def flat_shares(thumbnails: np.ndarray) -> np.ndarray:
    """Per gray image (N, H, W): the share of pixels whose right and lower neighbours both lie within
    one gray level. Graphics (placeholders, icons, blanks) are mostly flat; photographs, with their
    shading and sensor noise, are not."""
    flat = np.zeros(len(thumbnails))
    for start in range(0, len(thumbnails), 4096):  # bounded temporaries
        block = thumbnails[start:start + 4096].astype(np.int16)
        across = np.abs(np.diff(block, axis=2))[:, :-1, :] <= 1
        down = np.abs(np.diff(block, axis=1))[:, :, :-1] <= 1
        flat[start:start + 4096] = (across & down).mean(axis=(1, 2))
    return flat


#: FER+'s word that a FER2013 image shows no face: it excluded the image (no image name, or no votes
#: for it at all) or most of its annotators chose "not a face".
FERPLUS_NON_FACE_FLAGS = frozenset({"ferplus-no-image", "ferplus-no-votes", "ferplus-not-face"})


def ferplus_face_check(flags: Sequence[Sequence[str] | None], not_a_face: np.ndarray,
                       face_not_found: np.ndarray) -> dict[str, Any] | None:
    """How often FER+ agrees that the faces the audit calls ``not_a_face`` (and, for comparison, the
    ones the detector did not find) show no face: precision (share of the audit's rows that FER+
    calls non-faces) and recall (share of FER+'s non-faces the audit flags). None when no row
    carries a FER+ flag (FER+ not ingested). FER+ is never an input to the face check."""
    flags = [() if row is None else list(row) for row in flags]
    if not any(flag.startswith("ferplus-") for row in flags for flag in row):
        return None
    ferplus = np.array([bool(FERPLUS_NON_FACE_FLAGS.intersection(row)) for row in flags])

    def agreement(flagged: np.ndarray) -> dict[str, Any]:
        agreed = int((flagged & ferplus).sum())
        return {"flagged": int(flagged.sum()), "ferplus_non_faces": agreed,
                "precision": round(agreed / flagged.sum(), 4) if flagged.any() else None,
                "recall": round(agreed / ferplus.sum(), 4) if ferplus.any() else None}

    return {"ferplus_non_faces": int(ferplus.sum()), "not_a_face": agreement(np.asarray(not_a_face, bool)),
            "face_not_found": agreement(np.asarray(face_not_found, bool))}


def ferplus_face_table(check: dict[str, Any]) -> pd.DataFrame:
    """:func:`ferplus_face_check`'s result as a table, one row per face flag (report and CLI)."""
    return pd.DataFrame([{"flag": name.replace("_", " "), "flagged": part["flagged"],
                          "FER+ non-faces among them": part["ferplus_non_faces"],
                          "precision": part["precision"], "recall": part["recall"]}
                         for name, part in ((key, check[key]) for key in ("not_a_face", "face_not_found"))])


def _has_face(cascade: cv2.CascadeClassifier, thumb: np.ndarray, min_neighbors: int) -> bool:
    """Whether the Haar cascade finds a face. FER crops are tight, so the image is padded first:
    the cascade needs some context around a face (this doubles FER2013's hit rate)."""
    padded = cv2.copyMakeBorder(thumb, 8, 8, 8, 8, cv2.BORDER_REPLICATE)
    found = cascade.detectMultiScale(padded, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(20, 20))
    return len(found) > 0


def quality_flags(result: QualityResult, areas: np.ndarray, sources: np.ndarray,
                  thresholds: QualityThresholds | None = None) -> dict[str, np.ndarray]:
    """Boolean flags per image: blank, blurry, too dark, too bright, size anomaly, unreadable, missing
    image, and (when dlib searched for faces) not a face. An image that is missing or unreadable
    gets only that flag.

    ``not_a_face`` is stricter than ``face_detected`` False, which also holds the profile, tilted and
    covered faces the detector misses: no face at the detector's threshold *and* either nothing
    face-like even at ``not_face_score`` or a mostly flat image (a graphic)."""
    thresholds = thresholds or QualityThresholds()
    size_anomaly = np.zeros(len(areas), bool)
    for source in np.unique(sources):
        mask = sources == source
        median = np.median(areas[mask])
        ratio = areas[mask] / max(median, 1)
        size_anomaly[mask] = (ratio > thresholds.size_ratio) | (ratio < 1 / thresholds.size_ratio)
    size_anomaly &= result.readable
    flags = {
        "is_blank": result.readable & (result.contrast < thresholds.blank_std),
        "is_blurry": result.readable & (result.blur < thresholds.blur_variance),
        "too_dark": result.readable & (result.brightness < thresholds.dark_mean),
        "too_bright": result.readable & (result.brightness > thresholds.bright_mean),
        "size_anomaly": size_anomaly,
        "unreadable": ~result.readable & ~result.missing,
        "missing_image": result.missing,
    }
    if result.faceless is not None:
        graphic = result.flat_share > thresholds.graphic_flat_share
        flags["not_a_face"] = result.readable & ~result.face_detected & (result.faceless | graphic)
    return flags
