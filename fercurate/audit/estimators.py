"""Demographic estimators a user plugs in by local path (an ONNX model), never downloaded.

fercurate guesses nothing by itself: ``unknown`` stays unknown unless the user names a model.
A model fills only values that are still ``unknown`` (documented or user-given values win), and
every value it fills says so in its provenance column: ``estimated:<model file name>``.

The model contract: input float32 (N, 1, 48, 48), gray pixels scaled to 0..1; output (N, C)
scores (logits or probabilities). Its class names come from the model's metadata property
``classes`` (a JSON list) or, failing that, from ``<model>.json`` beside it (``{"classes": [...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from fercurate.audit.balance import with_demographic
from fercurate.errors import AuditError
from fercurate.schema import DEMOGRAPHIC_COLUMNS, UNKNOWN

_BATCH = 512


def estimator_classes(model_path: Path, session: Any) -> list[str]:
    """The class names of an estimator model (see the module docstring for where they live)."""
    metadata = session.get_modelmeta().custom_metadata_map
    if "classes" in metadata:
        return list(json.loads(metadata["classes"]))
    sidecar = model_path.with_name(model_path.name + ".json")
    if sidecar.is_file():
        return list(json.loads(sidecar.read_text())["classes"])
    raise AuditError(f"the estimator {model_path} names no classes",
                     f"add the metadata property 'classes' (a JSON list) or a file {sidecar.name} beside it")


def estimate_demographic(manifest: pa.Table, workspace_root: Path, column: str, model_path: Path,
                         min_confidence: float = 0.0) -> tuple[pa.Table, dict[str, int]]:
    """The manifest with ``column`` estimated where it is unknown, and counts of what happened.

    Rows whose top class scores below ``min_confidence`` (after softmax) stay ``unknown``.
    """
    import onnxruntime

    if column not in DEMOGRAPHIC_COLUMNS:
        raise AuditError(f"--estimator names the column {column!r}", f"use one of {', '.join(DEMOGRAPHIC_COLUMNS)}")
    if not model_path.is_file():
        raise AuditError(f"estimator model {model_path} does not exist", "give the path of a local .onnx file")
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    classes = estimator_classes(model_path, session)
    input_name = session.get_inputs()[0].name
    values = manifest[column].to_pylist()
    sources = manifest[f"{column}_source"].to_pylist()
    todo = [i for i, value in enumerate(values) if value == UNKNOWN]
    paths = manifest["filepath"].to_pylist()
    filled = uncertain = 0
    for start in range(0, len(todo), _BATCH):
        rows = todo[start:start + _BATCH]
        batch = np.stack([_gray48(workspace_root / paths[i]) for i in rows])[:, None].astype(np.float32) / 255.0
        scores = session.run(None, {input_name: batch})[0]
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        for i, guess, confidence in zip(rows, best, probabilities.max(axis=1)):
            if confidence < min_confidence:
                uncertain += 1
                continue
            values[i], sources[i] = classes[guess], f"estimated:{model_path.name}"
            filled += 1
    return with_demographic(manifest, column, values, sources), {"unknown_before": len(todo), "estimated": filled, "left_unknown_low_confidence": uncertain}


def _gray48(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise AuditError(f"cannot read the workspace image {path}",
                         "re-run `fercurate ingest` of its source to restore it")
    return image if image.shape == (48, 48) else cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)
