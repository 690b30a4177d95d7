"""Faces framed alike across datasets: every face warped to one canonical geometry (``fercurate align``).

What: each face with landmarks (CK+'s 68 points, or the 5 points dlib finds, see
:mod:`fercurate.audit.faces`) is warped by the similarity transform (rotation, uniform scale, shift)
that puts its two eye centres where FER2013's average crop has them (:data:`CANONICAL_EYES`), into a
``side`` x ``side`` image (48 by default, FER2013's size).

Why: FER2013 and CK+48 are tight face crops, but JAFFE's 256x256 frames (head, hair, shoulders) and
CK+'s 640x490 frames were resized whole, so a model trained on FER2013 met their faces at a quarter
of the size it learnt. Aligning FER2013 too removes its own spread of scale and roll.

Invariants:

* The image as ingested is never changed: ``filepath`` and ``sha1`` (the row's identity for
  duplicates and re-ingest) stay. The aligned face is stored content-addressed beside it, in
  ``aligned_filepath``, and the transform in ``alignment``: the 2x3 matrix ``[a, b, tx, c, d, ty]``
  taking a pixel (x, y) of the ingested image to ``(a x + b y + tx, c x + d y + ty)`` in the aligned
  one (pixel centres at integer coordinates, as OpenCV and the landmarks use).
* Train, export, benchmark, the generators and synthesize read the aligned face where there is one
  (:func:`fercurate.schema.face_filepaths`); the audit measures the image as ingested.
* A row is aligned only from plausible landmarks (:func:`plausible_eyes`: both eyes and the nose
  found, eyes at most :data:`MAX_ROLL_DEGREES` from level, the nose below them, the eye distance
  between :data:`EYE_DISTANCE_SHARE` of the image's shorter side). A tight crop (FER2013, CK+48)
  without them is used as ingested: it is already framed like the canonical crop. A larger frame
  without them cannot be framed and is flagged :data:`NOT_ALIGNED_FLAG` (``export --exclude-flag``
  leaves it out); the flag is removed when a later run aligns it.
* Synthetic rows are left alone: derived faces are made from their parent's aligned face, and
  generated ones are learnt from aligned faces.
* Re-running is safe and gives the same result: every row is recomputed from its landmarks, and an
  image already in the workspace is not written again. The manifest is replaced atomically under the
  workspace lock, as ingest does.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from fercurate.audit.faces import TIGHT_CROP_SIDE, find_faces_in_files, with_detected_landmarks
from fercurate.workspace import Workspace

#: Eye centres of FER2013's average crop, in pixels of a 48x48 image (image-left eye first):
#: the mean of dlib's 5-point eye centres over the 30,690 faces found in the full image-folder
#: release (x 0.306 and 0.668, y 0.375 of the side; the medians differ by under 0.5 px).
CANONICAL_EYES = ((14.7, 18.0), (32.06, 18.0))
CANONICAL_SIDE = 48
#: Faces rolled further than this (or upside down: the nose above the eyes) are not aligned.
MAX_ROLL_DEGREES = 45.0
#: The eye distance, as a share of the image's shorter side, that a face can have (FER2013: 0.22 to
#: 0.55 from the 1st to the 99th percentile; CK+'s and JAFFE's frames about 0.2).
EYE_DISTANCE_SHARE = (0.05, 0.8)
NOT_ALIGNED_FLAG = "not-aligned"
#: How each row was aligned, by how many points its landmarks have.
POINT_KINDS = {68: "68 points (dataset)", 5: "5 points (dlib)"}
_EYES = {68: (slice(36, 42), slice(42, 48), 33), 5: (slice(2, 4), slice(0, 2), 4)}  # eye, eye, nose tip/bottom


class AlignOptions(BaseModel):
    """How ``fercurate align`` frames the faces."""

    side: int = Field(CANONICAL_SIDE, ge=16, le=512, description="side of the aligned square face, in pixels")
    detect: bool = Field(True, description="find the 5 landmark points (dlib) of faces that have none stored")
    clear: bool = Field(False, description="remove every alignment instead: the faces are used as ingested again")


@dataclass
class AlignReport:
    """What one ``align`` run did."""

    side: int
    rows: int = 0  # real rows considered
    aligned: Counter[str] = field(default_factory=Counter)  # per point kind
    as_ingested: int = 0  # tight crops without plausible landmarks, used as they are
    not_aligned: int = 0  # larger frames without plausible landmarks (flagged)
    implausible: int = 0  # rows whose landmarks failed the plausibility check (of the two above)
    searched: int = 0  # rows dlib searched because they had no landmarks
    found: int = 0  # of those, faces found (their points are stored)
    cleared: int = 0
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "rows": self.rows, "aligned": sum(self.aligned.values()),
                "aligned_by": dict(self.aligned), "as_ingested": self.as_ingested, "not_aligned": self.not_aligned,
                "implausible_landmarks": self.implausible, "searched": self.searched, "found": self.found,
                "cleared": self.cleared, "by_source": self.by_source,
                "seconds": round(self.seconds, 3)}


def eye_points(landmarks: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Eye centres ``(N, 2, 2)`` (image-left eye first) and nose point ``(N, 2)`` of each row's
    stored landmarks (68 or 5 points); NaN where a row has none, another count, or non-finite points."""
    count = len(landmarks)
    eyes = np.full((count, 2, 2), np.nan)
    nose = np.full((count, 2), np.nan)
    for size, (first, second, tip) in _EYES.items():
        rows = [i for i, points in enumerate(landmarks) if points is not None and len(points) == size]
        if not rows:
            continue
        points = np.asarray([landmarks[i] for i in rows], np.float64)
        pair = np.stack([points[:, first].mean(axis=1), points[:, second].mean(axis=1)], axis=1)
        mirrored = pair[:, 0, 0] > pair[:, 1, 0]
        pair[mirrored] = pair[mirrored][:, ::-1]
        eyes[rows], nose[rows] = pair, points[:, tip]
    return eyes, nose


def plausible_eyes(eyes: np.ndarray, nose: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Which rows' eyes and nose describe an upright face of a believable size (see the module docstring)."""
    with np.errstate(invalid="ignore"):
        delta = eyes[:, 1] - eyes[:, 0]
        distance = np.hypot(delta[:, 0], delta[:, 1])
        roll = np.degrees(np.arctan2(delta[:, 1], delta[:, 0]))
        centre = eyes.mean(axis=1)
        # the nose lies below the eye line, measured along the face's own vertical axis
        below = (-(nose - centre)[:, 0] * np.sin(np.radians(roll)) + (nose - centre)[:, 1] * np.cos(np.radians(roll)))
        share = distance / np.minimum(heights, widths)
        return (np.isfinite(eyes).all(axis=(1, 2)) & np.isfinite(nose).all(axis=1)
                & (np.abs(roll) <= MAX_ROLL_DEGREES) & (below > 0.2 * distance)
                & (share >= EYE_DISTANCE_SHARE[0]) & (share <= EYE_DISTANCE_SHARE[1]))


def canonical_eyes(side: int) -> np.ndarray:
    """:data:`CANONICAL_EYES` for a ``side`` x ``side`` face (pixel centres scale about the image's corner)."""
    return (np.asarray(CANONICAL_EYES) + 0.5) * side / CANONICAL_SIDE - 0.5


def alignment_matrices(eyes: np.ndarray, side: int = CANONICAL_SIDE) -> np.ndarray:
    """The similarity transforms ``(N, 2, 3)`` taking each row's eye centres ``(N, 2, 2)`` onto
    :func:`canonical_eyes`: two point pairs fix rotation, scale and shift exactly."""
    target = canonical_eyes(side)
    source = eyes[:, 0, 0] + 1j * eyes[:, 0, 1], eyes[:, 1, 0] + 1j * eyes[:, 1, 1]
    goal = complex(*target[0]), complex(*target[1])
    scale = (goal[1] - goal[0]) / (source[1] - source[0])  # rotation and scale as one complex number
    shift = goal[0] - scale * source[0]
    return np.stack([np.stack([scale.real, -scale.imag, shift.real], axis=1),
                     np.stack([scale.imag, scale.real, shift.imag], axis=1)], axis=1)


def align_face(image: np.ndarray, matrix: np.ndarray, side: int = CANONICAL_SIDE) -> np.ndarray:
    """``image`` warped by ``matrix`` (2x3) into a ``side`` x ``side`` face. A large reduction is
    first made by area averaging (a bilinear warp alone would alias a 640x490 frame down to 48
    pixels); beyond the image's edge its border pixels are repeated."""
    matrix = np.asarray(matrix, np.float64).reshape(2, 3)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / width, small.shape[0] / height
        # a pixel x' of the reduced image is (x' + 0.5) / f - 0.5 of the original
        linear = matrix[:, :2] / np.array([fx, fy])
        shift = matrix[:, 2] + matrix[:, :2] @ np.array([0.5 / fx - 0.5, 0.5 / fy - 0.5])
        matrix = np.hstack([linear, shift[:, None]])
        image = small
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points ``(K, 2)`` of the ingested image in the aligned face's pixels (``matrix`` as stored)."""
    matrix = np.asarray(matrix, np.float64).reshape(2, 3)
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def align_workspace(workspace: Workspace, options: AlignOptions | None = None, *, ids: Sequence[str] | None = None,
                    workers: int | None = None, progress: Callable[[str, int, int], None] | None = None
                    ) -> AlignReport:
    """Align the workspace's real faces (only those of ``ids`` when given, e.g. one ingest's rows)
    to the canonical geometry and record it in the manifest (see the module docstring).

    ``progress`` is called with (step, done since its last call, total) for the steps
    ``landmarks`` (dlib searching faces without landmarks) and ``align``."""
    options = options or AlignOptions()
    started = time.perf_counter()
    report = AlignReport(side=options.side)
    workspace.require()
    with workspace.lock():
        manifest = workspace.manifest()
        chosen = pc.invert(pc.fill_null(manifest["is_synthetic"], False))
        if ids is not None:
            chosen = pc.and_(chosen, pc.is_in(manifest["id"], pa.array(list(ids), pa.string())))
        rows = np.flatnonzero(chosen.to_numpy(zero_copy_only=False))
        report.rows = len(rows)
        if options.clear:
            manifest, report.cleared = _cleared(manifest, rows)
        else:
            if options.detect:
                manifest = _detect_missing(workspace, manifest, rows, report, workers, progress)
            manifest = _aligned(workspace, manifest, rows, options.side, report, workers, progress)
        workspace.write_manifest(manifest)
    report.seconds = time.perf_counter() - started
    return report


def _detect_missing(workspace: Workspace, manifest: pa.Table, rows: np.ndarray, report: AlignReport,
                    workers: int | None, progress: Callable[[str, int, int], None] | None) -> pa.Table:
    """The manifest with dlib's 5 points stored for the chosen rows that had no landmarks."""
    empty = manifest["landmarks"].is_null().to_numpy(zero_copy_only=False)
    todo = rows[empty[rows]]
    report.searched = len(todo)
    if not len(todo):
        return manifest
    paths = [str(workspace.image_path(path)) for path in manifest["filepath"].take(pa.array(todo)).to_pylist()]
    detections = find_faces_in_files(paths, workers=workers,
                                     progress=(lambda n: progress("landmarks", n, len(todo))) if progress else None)
    report.found = int(detections.found.sum())
    return with_detected_landmarks(manifest, todo, detections)[0]


def _aligned(workspace: Workspace, manifest: pa.Table, rows: np.ndarray, side: int, report: AlignReport,
             workers: int | None, progress: Callable[[str, int, int], None] | None) -> pa.Table:
    part = manifest.take(pa.array(rows, pa.int64()))
    landmarks = part["landmarks"].to_pylist()
    heights, widths = part["height"].to_numpy().astype(float), part["width"].to_numpy().astype(float)
    eyes, nose = eye_points(landmarks)
    usable = plausible_eyes(eyes, nose, heights, widths)
    had_points = np.array([points is not None for points in landmarks], bool)
    frames = np.maximum(heights, widths) > TIGHT_CROP_SIDE
    matrices = np.full((len(rows), 2, 3), np.nan)
    if usable.any():
        matrices[usable] = alignment_matrices(eyes[usable], side)
    paths = part["filepath"].to_pylist()
    todo = np.flatnonzero(usable)

    def store(position: int) -> str:
        face = align_face(workspace.read_image(paths[position]), matrices[position], side)
        return workspace.store_image(face)["filepath"]

    aligned_paths: list[str | None] = [None] * len(rows)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for done, (position, path) in enumerate(zip(todo, pool.map(store, todo), strict=True), start=1):
            aligned_paths[position] = path
            if progress is not None and (done % 512 == 0 or done == len(todo)):
                progress("align", (done - 1) % 512 + 1, len(todo))
    not_aligned = ~usable & frames
    report.as_ingested = int((~usable & ~frames).sum())
    report.not_aligned = int(not_aligned.sum())
    report.implausible = int((~usable & had_points).sum())
    kinds = np.array([len(points) if points is not None else 0 for points in landmarks])
    report.aligned.update(POINT_KINDS[kind] for kind in kinds[usable])
    sources = np.array(part["source"].to_pylist(), dtype=object)
    for source in sorted(set(sources)):
        mine = sources == source
        report.by_source[source] = {"rows": int(mine.sum()), "aligned": int((usable & mine).sum()),
                                    "as_ingested": int((~usable & ~frames & mine).sum()),
                                    "not_aligned": int((not_aligned & mine).sum())}
    flags = [_with_flag(flags, flagged) for flags, flagged in zip(part["flags"].to_pylist(), not_aligned, strict=True)]
    alignment = [matrix.ravel().tolist() if ok else None for matrix, ok in zip(matrices, usable, strict=True)]
    return _with_columns(manifest, rows, {"aligned_filepath": aligned_paths, "alignment": alignment, "flags": flags})


def _with_flag(flags: list[str] | None, flagged: bool) -> list[str] | None:
    """``flags`` with :data:`NOT_ALIGNED_FLAG` added or removed (None stays None when nothing is left)."""
    others = [flag for flag in flags or () if flag != NOT_ALIGNED_FLAG]
    result = [*others, NOT_ALIGNED_FLAG] if flagged else others
    return result if result or flags is not None else None


def _cleared(manifest: pa.Table, rows: np.ndarray) -> tuple[pa.Table, int]:
    part = manifest.take(pa.array(rows, pa.int64()))
    count = int(pc.sum(pc.is_valid(part["aligned_filepath"])).as_py() or 0)
    flags = [_with_flag(flags, False) for flags in part["flags"].to_pylist()]
    return _with_columns(manifest, rows, {"aligned_filepath": [None] * len(rows), "alignment": [None] * len(rows),
                                          "flags": flags}), count


def _with_columns(manifest: pa.Table, rows: np.ndarray, values: dict[str, list[Any]]) -> pa.Table:
    """``manifest`` with ``values`` (one list per column, aligned with ``rows``) written at the
    row positions ``rows``."""
    for name, new in values.items():
        index = manifest.schema.get_field_index(name)
        column = manifest[name].to_pylist()
        for position, value in zip(rows.tolist(), new, strict=True):
            column[position] = value
        kind = manifest.schema.field(index)
        manifest = manifest.set_column(index, kind, pa.array(column, kind.type))
    return manifest
