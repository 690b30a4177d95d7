"""One pass over a workspace that finds what is wrong with the data before anyone trains on it.

``audit_workspace`` measures balance, quality, duplicates and leakage, and label noise; writes
the quality columns back into the manifest (atomically, under the workspace lock); and leaves
its findings in ``<workspace>/audit/``:

    rows.parquet              one row per face: every measurement and flag (manifest order)
    duplicate_groups.parquet  one row per near-duplicate group: members, splits, labels
    label_issues.parquet      likely mislabelled faces, worst first
    embeddings.npy            the feature vectors (manifest order) FiftyOne's similarity index uses
    summary.json              the figures the report and ``--json`` show (strict JSON: a figure
                              that cannot be computed, such as an accuracy over no rows, is null)

The workspace must exist (the audit never creates one), and its inputs (the demographics sidecar,
estimator models) are checked before any work: bad ones are :class:`~fercurate.errors.AuditError`s.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from fercurate.audit.age_gender import DEFAULT_MIN_CONFIDENCE, MODEL_NAME, EstimatedColumn, estimate_demographics
from fercurate.audit.balance import attach_demographics, balance_tables, split_of, synthetic_share
from fercurate.audit.duplicates import find_duplicates
from fercurate.audit.estimators import estimate_demographic
from fercurate.audit.faces import (DEFAULT_THRESHOLD, find_faces_in_files, missing_landmarks,
                                   with_detected_landmarks)
from fercurate.audit.label_noise import (
    DEFAULT_MAX_FLAGGED,
    ferplus_agreement,
    find_label_issues,
    image_features,
)
from fercurate.audit.quality import QualityThresholds, ferplus_face_check, measure_images, quality_flags
from fercurate.audit.report import write_report
from fercurate.audit.result import AuditResult
from fercurate.audit.uniqueness import embedding_uniqueness
from fercurate.atomic import atomic_path
from fercurate.errors import AuditError
from fercurate.options import NoiseModel
from fercurate.workspace import Workspace

Progress = Callable[[str, int, int | None], None]  # (step, advance, total)


class AuditOptions(BaseModel):
    """What the audit looks for and how hard."""

    thresholds: QualityThresholds = Field(default_factory=QualityThresholds)
    detect_faces: bool = True
    near_duplicate_distance: int = Field(4, ge=0, le=64, description="max Hamming distance of 64-bit pHashes")
    label_noise: bool = True
    noise_model: NoiseModel = Field("auto", description="the model whose out-of-sample probabilities cleanlab "
                                    "reads (see label_noise.NOISE_MODELS)")
    folds: int = Field(5, ge=2)
    noise_minutes: float = Field(15.0, gt=0, description="time budget of the cnn noise model, all folds together")
    noise_device: str = Field("auto", description="where the cnn noise model trains: auto, cpu, cuda or cuda:N")
    max_flagged: int | None = Field(DEFAULT_MAX_FLAGGED, ge=1, description="flag at most this many labels, the "
                                    "least trustworthy first (a set sized for review); None flags all cleanlab finds")
    seed: int = 0
    embedding_dimensions: int = Field(128, ge=2)
    demographics: Path | None = Field(None, description="a sidecar CSV: id plus gender/age_group/ethnicity")
    estimators: dict[str, Path] = Field(
        default_factory=dict, description="demographic column -> local ONNX model that fills unknown values")
    estimator_min_confidence: float = Field(0.0, ge=0, le=1, description="below it a value stays unknown")
    estimate: list[EstimatedColumn] = Field(
        default_factory=list, description="columns the built-in model estimates where unknown (gender, age_group)")
    estimate_min_confidence: dict[EstimatedColumn, float] = Field(
        default_factory=dict, description="per column, the confidence in percent under which a value stays "
                                          f"unknown (defaults {DEFAULT_MIN_CONFIDENCE})")
    landmarks: bool = Field(True, description="find each face's 5 landmark points with dlib (HOG detector + "
                            "5-point model, offline) and store them where the manifest has none; the occluders "
                            "of `synthesize` are then placed from them (placement 'detected')")
    landmark_threshold: float = Field(DEFAULT_THRESHOLD, ge=-2, le=2, description="dlib HOG detector threshold on "
                                      "tight crops (lower finds more faces, and more false ones)")


def audit_workspace(workspace: Workspace, options: AuditOptions | None = None,
                    progress: Progress | None = None) -> AuditResult:
    """Audit every row of the workspace; see the module docstring for what is written where."""
    options = options or AuditOptions()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 2)
        clock = now

    workspace.require()
    if options.demographics is not None and not options.demographics.is_file():
        raise AuditError(f"the demographics sidecar {options.demographics} does not exist or is not a file",
                         "give the path of a CSV with an id column and gender, age_group or ethnicity")
    with workspace.lock():
        manifest = workspace.manifest()
        if manifest.num_rows == 0:
            raise AuditError(f"{workspace.root} holds no rows", "run `fercurate ingest` first")
        sidecar = None
        if options.demographics is not None:
            manifest, sidecar = attach_demographics(manifest, options.demographics)
        estimated = {}
        for column, model in options.estimators.items():
            manifest, estimated[column] = estimate_demographic(manifest, workspace.root, column, model,
                                                               options.estimator_min_confidence)
        if options.estimate:
            manifest, estimated[MODEL_NAME] = estimate_demographics(
                manifest, workspace.root, options.estimate, min_confidence=options.estimate_min_confidence,
                progress=(lambda n: progress("demographics", n, None)) if progress else None)
        rows = manifest.drop_columns(["landmarks", "action_units"]).to_pandas()
        balance = balance_tables(rows)
        lap("balance")

        paths = [str(workspace.root / path) for path in rows["filepath"]]
        quality = measure_images(paths, options.thresholds, options.detect_faces,
                                 progress=(lambda n: progress("quality", n, len(paths))) if progress else None,
                                 face_progress=(lambda n: progress("faces", n, len(paths))) if progress else None)
        flags = quality_flags(quality, (rows["width"] * rows["height"]).to_numpy(), rows["source"].to_numpy(),
                              options.thresholds)
        lap("quality")

        landmark_summary: dict[str, Any] = {"ran": False}
        if options.landmarks:
            todo = missing_landmarks(manifest)
            if quality.faces is not None and options.thresholds.face_threshold <= options.landmark_threshold:
                detections = quality.faces.select(todo, min_score=options.landmark_threshold)  # no second search
            else:
                detections = find_faces_in_files(
                    [paths[i] for i in todo.tolist()], threshold=options.landmark_threshold,
                    progress=(lambda n: progress("landmarks", n, len(todo))) if progress else None)
            manifest, landmark_summary = with_detected_landmarks(manifest, todo, detections)
            landmark_summary = {"ran": True, "threshold": options.landmark_threshold, **landmark_summary}
            lap("landmarks")

        splits = split_of(rows)
        duplicates = find_duplicates(rows["id"].tolist(), rows["sha1"].tolist(), quality.phash,
                                     splits.tolist(), rows["label"].tolist(), options.near_duplicate_distance)
        balance["synthetic_share"] = synthetic_share(rows, duplicates.near_group)
        lap("duplicates")

        embeddings = image_features(quality.thumbnails, options.embedding_dimensions, options.seed)
        uniqueness = embedding_uniqueness(embeddings)
        lap("embeddings")
        audit_rows = pd.DataFrame({
            "id": rows["id"], "source": rows["source"], "split": splits, "label": rows["label"],
            "brightness": quality.brightness, "contrast": quality.contrast, "blur": quality.blur,
            "face_detected": quality.face_detected if options.detect_faces else None, **flags,
            "phash": [f"{value:016x}" for value in quality.phash.tolist()],
            "exact_group": duplicates.exact_group, "near_group": duplicates.near_group,
            "duplicate_of": duplicates.duplicate_of, "cross_split_duplicate": duplicates.cross_split,
            "conflicting_duplicate_labels": duplicates.conflicting_labels, "uniqueness": uniqueness,
            **balance["thin_cells"],
        })
        noise_summary: dict[str, Any] = {"ran": False}
        if options.label_noise:
            noise = find_label_issues(
                embeddings, rows["label"].to_numpy(), options.noise_model, options.folds, options.seed,
                thumbnails=quality.thumbnails, max_minutes=options.noise_minutes, device=options.noise_device,
                max_flagged=options.max_flagged,
                progress=(lambda done, total: progress("label noise", 1, total)) if progress else None)
            audit_rows["label_issue"] = noise.label_issue
            audit_rows["label_quality"] = noise.label_quality
            audit_rows["predicted_label"] = noise.predicted_label
            audit_rows["predicted_probability"] = noise.predicted_probability
            noise_summary = {
                "ran": True, "method": noise.method, "classes": noise.classes,
                "cross_validated_accuracy": round(noise.cross_validated_accuracy, 4),
                "audited_rows": int(noise.audited.sum()), "flagged": int(noise.label_issue.sum()),
                "cleanlab_issues": noise.issues_found, "max_flagged": options.max_flagged,
                "ferplus_check": ferplus_agreement(rows["label_votes"].tolist(), rows["label"].tolist(),
                                                   rows["label_source"].tolist(), noise.label_issue,
                                                   noise.label_quality),
            }
        lap("label noise")

        workspace.write_manifest(_with_quality_columns(manifest, audit_rows, options.detect_faces))
        result = _assemble(audit_rows, duplicates.groups, balance, embeddings, noise_summary,
                           {"sidecar": sidecar, "estimated": estimated, "landmarks": landmark_summary}, options,
                           rows["flags"].tolist())
        result.seconds = seconds
        result.directory = _write_outputs(workspace, result)
        lap("write")
    return result


def _with_quality_columns(manifest: pa.Table, audit_rows: pd.DataFrame, faces_measured: bool) -> pa.Table:
    """The manifest with the schema's quality columns filled from the audit."""
    values = {
        "phash": pa.array(audit_rows["phash"], pa.string()),
        "blur": pa.array(audit_rows["blur"], pa.float32()),
        "brightness": pa.array(audit_rows["brightness"], pa.float32()),
        "contrast": pa.array(audit_rows["contrast"], pa.float32()),
        "duplicate_of": pa.array(audit_rows["duplicate_of"], pa.string()),
    }
    if faces_measured:
        values["face_detected"] = pa.array(audit_rows["face_detected"], pa.bool_())
    for name, column in values.items():
        manifest = manifest.set_column(manifest.schema.get_field_index(name), manifest.schema.field(name), column)
    return manifest


def _assemble(audit_rows: pd.DataFrame, groups: pd.DataFrame, balance: dict[str, Any], embeddings: np.ndarray,
              noise: dict[str, Any], demographics: dict[str, Any], options: AuditOptions,
              flags: list[list[str] | None]) -> AuditResult:
    if noise["ran"]:
        issues = (audit_rows[audit_rows["label_issue"]]
                  .sort_values("label_quality")[["id", "source", "split", "label", "predicted_label",
                                                 "predicted_probability", "label_quality"]].reset_index(drop=True))
    else:
        issues = pd.DataFrame(columns=["id", "source", "split", "label", "predicted_label", "predicted_probability",
                                       "label_quality"])
    quality_counts = {name: int(audit_rows[name].sum()) for name in
                      ("is_blank", "is_blurry", "too_dark", "too_bright", "size_anomaly", "unreadable",
                       "missing_image")}
    if options.detect_faces:
        measured = ~(audit_rows["unreadable"] | audit_rows["missing_image"])
        quality_counts["face_not_found"] = int((~audit_rows["face_detected"].astype(bool) & measured).sum())
    if "not_a_face" in audit_rows:
        quality_counts["not_a_face"] = int(audit_rows["not_a_face"].sum())
    summary = {
        "rows": len(audit_rows),
        "options": json.loads(options.model_dump_json()),
        "balance": {
            "per_split": balance["per_split"].to_dict("index"),
            "imbalance_ratio": balance["imbalance_ratio"].to_dict(),
            "demographics": balance["demographics"],
            "subjects": int(balance["per_subject"].shape[0]),
            "synthetic_share": balance["synthetic_share"].to_dict("records"),
        },
        "quality": quality_counts,
        "faces_against_ferplus": (ferplus_face_check(flags, audit_rows["not_a_face"].to_numpy(bool),
                                                     ~audit_rows["face_detected"].astype(bool).to_numpy()
                                                     & measured.to_numpy())
                                  if "not_a_face" in audit_rows else None),
        "duplicates": {
            "exact_groups": int(audit_rows.loc[audit_rows.exact_group >= 0, "exact_group"].nunique()),
            "exact_duplicate_images": int(audit_rows.exact_group.ge(0).sum()
                                          - audit_rows.loc[audit_rows.exact_group >= 0, "exact_group"].nunique()),
            "near_groups": len(groups),
            "rows_in_near_groups": int(audit_rows.near_group.ge(0).sum()),
            "groups_across_splits": int(groups["cross_split"].sum()) if len(groups) else 0,
            "groups_with_conflicting_labels": int(groups["conflicting_labels"].sum()) if len(groups) else 0,
            "max_distance": options.near_duplicate_distance,
        },
        "label_noise": noise,
        "demographics_sidecar": demographics["sidecar"],
        "demographics_estimated": demographics["estimated"],
        "landmarks": demographics["landmarks"],
    }
    return AuditResult(audit_rows, groups, issues, balance, summary, embeddings)


def _write_outputs(workspace: Workspace, result: AuditResult) -> Path:

    directory = workspace.root / "audit"
    directory.mkdir(exist_ok=True)
    with atomic_path(directory / "rows.parquet") as path:
        result.rows.to_parquet(path, index=False)
    groups = result.groups.assign(ids=result.groups["ids"].map(list), splits=result.groups["splits"].map(list),
                                  labels=result.groups["labels"].map(list))
    with atomic_path(directory / "duplicate_groups.parquet") as path:
        groups.to_parquet(path, index=False)
    with atomic_path(directory / "label_issues.parquet") as path:
        result.label_issues.to_parquet(path, index=False)
    with atomic_path(directory / "embeddings.npy") as path:
        np.save(path, result.embeddings)
    result.summary["seconds"] = result.seconds
    with atomic_path(directory / "summary.json") as path:
        path.write_text(summary_json(result.summary))
    write_report(workspace, result, directory)
    return directory


def summary_json(summary: dict[str, Any]) -> str:
    """``summary`` as strict JSON (what ``summary.json`` and ``audit --json`` hold): numpy numbers
    become plain ones, paths strings, and NaN or infinite figures null (JSON has no NaN)."""
    return json.dumps(_plain(summary), indent=2, allow_nan=False)


def _plain(value: Any) -> Any:
    """``value`` in the types strict JSON holds (see :func:`summary_json`)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


