"""fercurate align: the transform, the plausibility rule, and the workspace step on generated frames
(demo faces drawn into larger frames, as JAFFE's and CK+'s are, beside tight crops and a faceless frame)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from fercurate import SchemaError, Workspace, align_workspace, export_dataset
from fercurate.align import (NOT_ALIGNED_FLAG, AlignOptions, align_face, alignment_matrices, canonical_eyes, eye_points,
                             plausible_eyes, transform_points)
from fercurate.audit.faces import find_faces_in_files
from fercurate.compute import load_images
from fercurate.export import ExportOptions
from fercurate.schema import face_filepaths, validate_table
from fercurate.sources import ImageFolder
from fercurate.train.runs import faces_as
from fercurate_cli.main import app
from releases import demo_faces

FRAME = 160


def _dots(side: tuple[int, int], eyes: np.ndarray) -> np.ndarray:
    image = np.zeros(side, np.uint8)
    for x, y in eyes:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, 255, -1, lineType=cv2.LINE_AA)
    return image


def _centroids(image: np.ndarray) -> np.ndarray:
    """Brightness-weighted centres of the left and right halves' bright blobs."""
    weights = np.where(image > 60, image.astype(np.float64), 0.0)
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    half = image.shape[1] // 2
    return np.array([[(xs * part).sum() / part.sum(), (ys * part).sum() / part.sum()]
                     for part in (np.where(xs < half, weights, 0), np.where(xs >= half, weights, 0))])


@pytest.mark.parametrize("side", [48, 96])
def test_alignment_puts_rolled_eyes_of_a_large_frame_on_the_canonical_points(side: int) -> None:
    centre, distance, roll = np.array([120.0, 90.0]), 70.0, np.radians(20)
    offset = np.array([np.cos(roll), np.sin(roll)]) * distance / 2
    eyes = np.stack([centre - offset, centre + offset])
    frame = _dots((200, 240), eyes)
    matrix = alignment_matrices(eyes[None], side)[0]
    np.testing.assert_allclose(transform_points(eyes, matrix), canonical_eyes(side), atol=1e-9)
    aligned = align_face(frame, matrix, side)  # 70 px -> 17 px: reduced by area first at side 48
    assert aligned.shape == (side, side)
    np.testing.assert_allclose(_centroids(aligned), canonical_eyes(side), atol=0.35 * side / 48)


def test_eye_points_reads_both_layouts_and_plausibility_refuses_odd_faces() -> None:
    ibug = np.zeros((68, 2))
    ibug[36:42], ibug[42:48], ibug[33] = (30, 20), (10, 20), (20, 32)  # eyes listed right of the image first
    dlib = [(32, 18), (28, 18), (12, 18), (16, 18), (22, 30)]  # dlib: the image-right eye's corners first
    eyes, nose = eye_points([ibug.tolist(), dlib, None, [(1, 2)] * 3])
    np.testing.assert_allclose(eyes[0], [[10, 20], [30, 20]])
    np.testing.assert_allclose(eyes[1], [[14, 18], [30, 18]])
    np.testing.assert_allclose(nose[:2], [[20, 32], [22, 30]])
    assert np.isnan(eyes[2:]).all() and np.isnan(nose[2:]).all()

    def plausible(left: tuple[float, float], right: tuple[float, float], tip: tuple[float, float]) -> bool:
        return bool(plausible_eyes(np.array([[left, right]], float), np.array([tip], float),
                                   np.array([48.0]), np.array([48.0]))[0])
    assert plausible((15, 18), (32, 18), (24, 30))
    assert not plausible((15, 18), (32, 18), (24, 10))  # the nose above the eyes: upside down
    assert not plausible((15, 10), (25, 30), (10, 30))  # rolled 63 degrees
    assert not plausible((23, 18), (24, 18), (24, 30))  # eyes 1 px apart
    assert not plausible((15, 18), (np.nan, 18), (24, 30))


def _release(root: Path) -> dict[str, str]:
    """An image folder: 4 faces in 160x160 frames (``frame-*``), 4 tight 48x48 crops (``crop-*``),
    a blank frame and a blank crop; returns file stem -> kind."""
    images, labels = demo_faces(2, 4)
    kinds = {}
    for number, (pixels, label) in enumerate(zip(images[:8], labels[:8])):
        folder = root / {"happiness": "happy", "sadness": "sad"}.get(label, label)
        folder.mkdir(parents=True, exist_ok=True)
        if number % 2:
            frame = np.full((FRAME, FRAME), 90, np.uint8)
            frame[20:116, 40 + number:136 + number] = cv2.resize(pixels, (96, 96))
            stem, pixels = f"frame-{number}", frame
        else:
            stem = f"crop-{number}"
        assert cv2.imwrite(str(folder / f"{stem}.png"), pixels)
        kinds[stem] = stem.split("-")[0]
    (root / "neutral").mkdir(exist_ok=True)
    for stem, side in (("blank-frame", FRAME), ("blank-crop", 48)):
        assert cv2.imwrite(str(root / "neutral" / f"{stem}.png"), np.full((side, side), 128, np.uint8))
        kinds[stem] = stem
    return kinds


@pytest.fixture()
def aligned_workspace(tmp_path: Path) -> tuple[Workspace, Path]:
    release = tmp_path / "release"
    _release(release)
    workspace = Workspace(tmp_path / "ws")
    workspace.ingest(ImageFolder(release))
    return workspace, release


def _by_stem(workspace: Workspace) -> dict[str, dict]:
    return {Path(row["origin"]).stem: row for row in workspace.manifest().to_pylist()}


def test_align_workspace_frames_faces_keeps_originals_and_flags_faceless_frames(aligned_workspace) -> None:
    workspace, _ = aligned_workspace
    before = _by_stem(workspace)
    report = align_workspace(workspace, workers=1)
    rows = _by_stem(workspace)
    assert report.rows == 10 and report.searched == 10
    assert sum(report.aligned.values()) == 8 and report.aligned == {"5 points (dlib)": 8}
    assert (report.as_ingested, report.not_aligned) == (1, 1)
    for stem, row in rows.items():
        assert (row["filepath"], row["sha1"]) == (before[stem]["filepath"], before[stem]["sha1"])  # kept
        if stem.startswith("blank"):
            assert row["aligned_filepath"] is None and row["alignment"] is None
            assert (NOT_ALIGNED_FLAG in (row["flags"] or [])) == (stem == "blank-frame")
            continue
        face = cv2.imread(str(workspace.image_path(row["aligned_filepath"])), cv2.IMREAD_UNCHANGED)
        assert face.shape == (48, 48)
        # the stored transform takes the stored landmarks' eyes onto the canonical points
        eyes, _ = eye_points([row["landmarks"]])
        np.testing.assert_allclose(transform_points(eyes[0], row["alignment"]), canonical_eyes(48), atol=1e-3)
    validate_table(workspace.manifest())
    # found again on the aligned faces themselves, the eyes are where the canonical crop has them
    faces = [workspace.image_path(row["aligned_filepath"]) for row in rows.values() if row["aligned_filepath"]]
    found = find_faces_in_files(faces, workers=1)
    assert found.found.all()
    eyes, _ = eye_points(found.landmarks.tolist())
    error = np.abs(eyes - canonical_eyes(48))
    assert np.median(error) < 0.5 and error.max() < 4  # dlib's points move by a pixel or so between images


def test_align_rerun_is_identical_and_clear_restores_the_ingested_faces(aligned_workspace) -> None:
    workspace, _ = aligned_workspace
    align_workspace(workspace, workers=1)
    first = workspace.manifest()
    again = align_workspace(workspace, workers=1)
    assert again.searched == 2  # only the blanks still have no landmarks
    assert workspace.manifest().equals(first)
    cleared = align_workspace(workspace, AlignOptions(clear=True))
    assert cleared.cleared == 8
    manifest = workspace.manifest()
    assert manifest["aligned_filepath"].null_count == manifest.num_rows
    assert not any(NOT_ALIGNED_FLAG in (flags or []) for flags in manifest["flags"].to_pylist())
    assert manifest["landmarks"].null_count == 2  # the landmarks found are kept


def test_train_export_and_benchmark_read_the_aligned_face(aligned_workspace, tmp_path: Path) -> None:
    workspace, release = aligned_workspace
    align_workspace(workspace, workers=1)
    manifest = workspace.manifest()
    frame = manifest.filter(pa.compute.match_substring(manifest["origin"], "frame-1"))
    assert face_filepaths(frame) == frame["aligned_filepath"].to_pylist()
    rows = frame.to_pandas()
    aligned = load_images(workspace.root, face_filepaths(rows))
    original = load_images(workspace.root, face_filepaths(faces_as(rows, "original")))
    whole = cv2.resize(cv2.imread(str(workspace.image_path(rows["filepath"][0])), cv2.IMREAD_GRAYSCALE), (48, 48),
                       interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(original[0], whole)
    assert not np.array_equal(aligned[0], original[0])
    export_dataset(workspace, tmp_path / "out", ExportOptions(formats=["imagefolder", "fer2013-csv"],
                                                                 split={"strategy": "grouped"}))
    exported = {path.stem: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                for path in (tmp_path / "out" / "imagefolder").rglob("*.png")}
    assert {image.shape for image in exported.values()} == {(48, 48), (FRAME, FRAME)}  # only the blank frame is large
    assert "8 of the 10 faces are aligned" in (tmp_path / "out" / "README.md").read_text()  # the dataset card
    row_id = rows["id"][0]
    exported_frame = exported[row_id.replace("/", "__").replace(":", "_")]
    np.testing.assert_array_equal(exported_frame, aligned[0])


def test_reingest_keeps_the_alignment_and_the_schema_rule_holds(aligned_workspace) -> None:
    workspace, release = aligned_workspace
    align_workspace(workspace, workers=1)
    aligned = workspace.manifest()
    report = workspace.ingest(ImageFolder(release))
    assert report.rows_kept_enrichment == 9  # every row but the blank crop, which nothing was added to
    assert workspace.manifest()["aligned_filepath"].equals(aligned["aligned_filepath"])
    column = aligned.schema.get_field_index("alignment")
    kind = aligned.schema.field(column)
    broken = aligned.set_column(column, kind, pa.nulls(aligned.num_rows, kind.type))
    with pytest.raises(SchemaError, match="both set or both null"):
        validate_table(broken)


def test_cli_ingest_align_and_align_json(tmp_path: Path) -> None:
    release = tmp_path / "release"
    _release(release)
    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", "imagefolder", str(release), "-w", str(tmp_path / "ws"), "--align",
                                   "--json"])
    assert ingested.exit_code == 0, ingested.output
    assert json.loads(ingested.stdout)["alignment"]["aligned"] == 8
    shown = runner.invoke(app, ["align", "-w", str(tmp_path / "ws")])
    assert shown.exit_code == 0, shown.output
    assert "not-aligned" in shown.stdout and "imagefolder" in shown.stdout
    refused = runner.invoke(app, ["align", "-w", str(tmp_path / "ws"), "--side", "4"])
    assert refused.exit_code == 2 and "side" in refused.output
    missing = runner.invoke(app, ["align", "-w", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no workspace" in missing.output


def test_fiftyone_shows_and_exports_the_aligned_face(aligned_workspace, tmp_path: Path,
                                                    fiftyone_database: Path) -> None:
    import fiftyone as fo

    from fercurate.audit.fiftyone_database import dataset_name
    from fercurate.audit.fiftyone_sync import FACE_FIELD, sync_to_fiftyone

    workspace, _ = aligned_workspace
    workspace = Workspace(workspace.root.rename(tmp_path / "fiftyone-aligned-ws"))  # a mirror name of its own
    align_workspace(workspace, workers=1)
    manifest = workspace.manifest()
    dataset = sync_to_fiftyone(workspace)
    try:
        assert dataset.app_config.media_fields == ["filepath", FACE_FIELD]
        faces = dict(zip(dataset.values("fercurate_id"), dataset.values(FACE_FIELD), strict=True))
        root = str(workspace.root.resolve())
        assert faces == {row_id: f"{root}/{path}" for row_id, path in zip(manifest["id"].to_pylist(),
                                                                         face_filepaths(manifest), strict=True)}
        export_dataset(workspace, tmp_path / "out", ExportOptions(formats=["fiftyone"], split={"strategy": "grouped"}))
        reloaded = fo.Dataset.from_dir(str(tmp_path / "out" / "fiftyone"), dataset_type=fo.types.FiftyOneDataset)
        sizes = {(sample["width"], sample.metadata.width) for sample in reloaded}
        reloaded.delete()
        assert (FRAME, 48) in sizes  # a frame's row (width as ingested) exported as its 48 px aligned face
        assert (FRAME, FRAME) in sizes  # the faceless frame, not aligned, exported as it is
    finally:
        fo.delete_dataset(dataset_name(workspace))
