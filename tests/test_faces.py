"""Landmarks found on the image (fercurate.audit.faces), stored by the audit, used by the occluders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from test_synthesize import _landmarks_68, assert_occluder_in_region

from fercurate.audit import run as audit_run
from fercurate.audit.faces import (
    FaceLandmarks,
    find_faces,
    find_faces_in_files,
    with_detected_landmarks,
)
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.sources.demo import open_demo
from fercurate.synth import OCCLUDERS, FaceGeometry, SynthesizeOptions, synthesize
from fercurate.synth.augment import augment_faces
from fercurate.synth.occluders import geometry_for, placement_for
from fercurate.workspace import Workspace

#: dlib's 5 points as the 68-point layout has them: image-right eye outer and inner corner,
#: image-left eye outer and inner corner, nose bottom.
FIVE_FROM_68 = [45, 42, 36, 39, 33]


def _five_points(size: int) -> np.ndarray:
    return _landmarks_68(size)[FIVE_FROM_68]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real photograph that ships with scikit-image (a FiftyOne dependency): one frontal face."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (installed with fiftyone) ships the test photo")
    return data.astronaut()


@pytest.fixture
def demo_workspace(tmp_path: Path) -> Workspace:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_demo(tmp_path / "demo", per_class=4))
    return space


def _set_landmarks(space: Workspace, points: list[list[list[float]] | None]) -> None:
    manifest = space.manifest()
    index = manifest.schema.get_field_index("landmarks")
    with space.lock():
        space.write_manifest(manifest.set_column(index, manifest.schema.field(index),
                                                 pa.array(points, manifest.schema.field(index).type)))


def test_placement_rule_is_one_and_five_points_give_detected() -> None:
    five, sixty_eight = _five_points(120), _landmarks_68(120)
    assert [placement_for(p) for p in (sixty_eight, five, None, np.full((5, 2), np.nan), np.zeros((3, 2)))] == [
        "landmarks", "detected", "canonical", "canonical", "canonical"]
    image = np.zeros((120, 120), np.uint8)
    assert geometry_for(image, five).placement == "detected"
    _, placements = augment_faces([image] * 3, ["mask"] * 3, [1, 2, 3], landmarks=[sixty_eight, five, None])
    assert placements == ["landmarks", "detected", "canonical"]


def test_five_point_geometry_agrees_with_the_68_point_one() -> None:
    full, five = FaceGeometry.from_landmarks(_landmarks_68(120)), FaceGeometry.from_five_points(_five_points(120))
    assert np.allclose(five.left_eye, full.left_eye, atol=0.5) and np.allclose(five.right_eye, full.right_eye, atol=0.5)
    assert five.nose == full.nose and five.left_eye[0] < five.right_eye[0]
    d = full.eye_distance  # the estimated parts fall within a third of an eye distance of the measured ones
    assert abs(five.mouth[1] - full.mouth[1]) < d / 3 and abs(five.mouth[0] - full.mouth[0]) < d / 3
    assert five.brow_y < five.eye_y < five.nose[1] < five.mouth[1] < five.chin_y
    assert five.face_x[0] < five.left_eye[0] and five.face_x[1] > five.right_eye[0]
    mirrored = FaceGeometry.from_five_points(_five_points(120)[[2, 3, 0, 1, 4]])
    assert mirrored.left_eye == five.left_eye


@pytest.mark.parametrize("name", sorted(OCCLUDERS))
def test_each_occluder_lands_inside_its_region_from_five_points(name: str) -> None:
    size = 120
    points = _five_points(size)
    assert_occluder_in_region(name, size, points, FaceGeometry.from_five_points(points))


def test_detector_finds_the_face_in_a_frame_and_in_a_tight_48px_crop(astronaut: np.ndarray) -> None:
    frame = find_faces([astronaut])
    assert frame.found.tolist() == [True]
    left, top, right, bottom = frame.boxes[0]
    points = frame.landmarks[0]
    assert left < points[:, 0].min() and points[:, 0].max() < right and top < points[:, 1].min() < bottom
    assert points[2:4, 0].mean() < points[4, 0] < points[0:2, 0].mean()  # image-left eye, nose, image-right eye
    # a FER2013-like tight crop: the box plus a margin, gray, 48x48
    margin = 0.15 * (right - left)
    x0, y0, x1, y1 = (round(float(v)) for v in (left - margin, top - margin, right + margin, bottom + margin))
    crop = cv2.resize(cv2.cvtColor(astronaut[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), (48, 48),
                      interpolation=cv2.INTER_AREA)
    blank = np.full((48, 48), 128, np.uint8)
    tight = find_faces([crop, blank, crop[::-1]])
    assert tight.found.tolist()[:2] == [True, False]
    assert np.isnan(tight.landmarks[1]).all() and np.isnan(tight.score[1])
    assert tight.landmarks.dtype == np.float32 and tight.landmarks.shape == (3, 5, 2)
    expected = (points - [x0, y0]) * 48 / (x1 - x0)  # the frame's points in the crop's pixels
    assert np.abs(tight.landmarks[0] - expected).max() < 2.5
    # a stricter threshold finds less, never more
    assert not find_faces([crop], threshold=float(tight.score[0]) + 0.01).found[0]


def test_detector_results_do_not_depend_on_the_process_pool(astronaut: np.ndarray, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.audit import faces

    crop = cv2.resize(cv2.cvtColor(astronaut[60:190, 160:285], cv2.COLOR_RGB2GRAY), (48, 48))
    paths = []
    for i, image in enumerate([crop, np.full((48, 48), 90, np.uint8), crop[:, ::-1]]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    paths.append(tmp_path / "missing.png")
    alone = find_faces_in_files(paths, workers=1)
    monkeypatch.setattr(faces, "_CHUNK", 1)
    done: list[int] = []
    pooled = find_faces_in_files(paths, workers=2, progress=done.append)
    assert sum(done) == 4 and alone.found.tolist()[1:] == pooled.found.tolist()[1:] == [False, True, False]
    for name in ("found", "score", "boxes", "landmarks"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(pooled, name))


def test_audit_stores_landmarks_only_where_there_are_none(demo_workspace: Workspace,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    space = demo_workspace
    count = space.manifest().num_rows
    sixty_eight = _landmarks_68(48).tolist()
    _set_landmarks(space, [sixty_eight] + [None] * (count - 1))
    searched: list[str] = []

    def detect(paths: list[str], **options: object) -> FaceLandmarks:  # the demo's cartoons are no real faces
        searched.extend(paths)
        found = np.arange(len(paths)) % 2 == 0
        points = np.where(found[:, None, None], _five_points(48)[None], np.nan).astype(np.float32)
        return FaceLandmarks(found, np.where(found, 1.0, np.nan).astype(np.float32),
                             np.full((len(paths), 4), np.nan, np.float32), points)

    monkeypatch.setattr(audit_run, "find_faces_in_files", detect)
    assert AuditOptions().landmarks  # on by default: it reuses the face check's dlib search
    result = audit_workspace(space, AuditOptions(label_noise=False, detect_faces=False, landmarks=True))
    stored = space.manifest()["landmarks"].to_pylist()
    assert len(searched) == count - 1 and np.allclose(stored[0], sixty_eight)
    assert [len(points) if points else None for points in stored[1:]] == [
        5 if i % 2 == 0 else None for i in range(count - 1)]
    summary = result.summary["landmarks"]
    assert summary["ran"] and summary["rows_with_landmarks_before"] == 1 and summary["searched"] == count - 1
    assert summary["stored"] == (count) // 2 and summary["stored"] + summary["no_face_found"] == count - 1
    # a second audit searches only the rows still without points
    searched.clear()
    again = audit_workspace(space, AuditOptions(label_noise=False, detect_faces=False, landmarks=True))
    assert len(searched) == again.summary["landmarks"]["searched"] == (count - 1) // 2
    assert audit_workspace(space, AuditOptions(label_noise=False, detect_faces=False,
                                               landmarks=False)).summary["landmarks"] == {"ran": False}


def test_with_detected_landmarks_never_overwrites() -> None:
    table = pa.table({"landmarks": pa.array([[[1.0, 2.0]] * 68, None, None],
                                            pa.list_(pa.list_(pa.float32(), 2)))})
    found = FaceLandmarks(np.array([True, True, False]), np.ones(3, np.float32), np.zeros((3, 4), np.float32),
                          np.full((3, 5, 2), 7.0, np.float32))
    out, summary = with_detected_landmarks(table, np.array([0, 1, 2]), found)
    values = out["landmarks"].to_pylist()
    assert len(values[0]) == 68 and values[1] == [[7.0, 7.0]] * 5 and values[2] is None
    assert summary["stored"] == 1 and summary["no_face_found"] == 1


def test_synthesize_records_detected_placement_for_parents_with_five_points(demo_workspace: Workspace) -> None:
    space = demo_workspace
    count = space.manifest().num_rows
    _set_landmarks(space, [_five_points(48).tolist()] * count)
    report = synthesize(space, SynthesizeOptions(target="uniform:5"))
    assert sum(report.added.values()) > 0 and set(report.placements) == {"detected"}
    synthetic = space.manifest().filter(space.manifest()["is_synthetic"]).to_pylist()
    assert synthetic and {json.loads(row["recipe"])["placement"] for row in synthetic} == {"detected"}


def test_landmarks_reuse_the_quality_steps_dlib_search(demo_workspace: Workspace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.audit import quality

    calls: list[int] = []

    def detect(paths: list[str], **options: object) -> FaceLandmarks:
        calls.append(len(paths))
        found = np.ones(len(paths), bool)
        return FaceLandmarks(found, np.full(len(paths), 0.5, np.float32), np.zeros((len(paths), 4), np.float32),
                             np.repeat(_five_points(48)[None], len(paths), 0).astype(np.float32))

    monkeypatch.setattr(quality, "find_faces_in_files", detect)
    monkeypatch.setattr(audit_run, "find_faces_in_files", detect)
    count = demo_workspace.manifest().num_rows
    result = audit_workspace(demo_workspace, AuditOptions(label_noise=False, landmarks=True))
    assert calls == [count]  # one search serves face_detected and the landmarks
    assert result.rows["face_detected"].all() and result.summary["quality"]["face_not_found"] == 0
    assert result.summary["landmarks"]["stored"] == count
    assert all(len(points) == 5 for points in demo_workspace.manifest()["landmarks"].to_pylist())


def test_not_a_face_is_stricter_than_a_missed_face(astronaut: np.ndarray, tmp_path: Path) -> None:
    """A photographed face is found; a flat placeholder icon and a blank are not faces. A face the
    detector misses is flagged only when nothing face-like scored above ``not_face_score`` or the
    image is a graphic."""
    from dataclasses import replace

    from fercurate.audit.quality import measure_images, quality_flags

    face = cv2.resize(cv2.cvtColor(astronaut[60:190, 160:285], cv2.COLOR_RGB2GRAY), (48, 48))  # as above
    icon = np.full((48, 48), 235, np.uint8)  # a "..." placeholder, like FER2013's missing-image icons
    cv2.rectangle(icon, (8, 14), (40, 34), 90, -1)
    for x in (16, 24, 32):
        cv2.circle(icon, (x, 24), 3, 235, -1)
    paths = []
    for name, pixels in {"face": face, "icon": icon, "blank": np.full((48, 48), 128, np.uint8)}.items():
        paths.append(str(tmp_path / f"{name}.png"))
        assert cv2.imwrite(paths[-1], pixels)
    result = measure_images(paths, workers=1)
    sources = np.array(["x"] * 3)
    assert result.face_detected.tolist() == [True, False, False]
    assert result.flat_share[0] < 0.1 and result.flat_share[1] > 0.4 and result.flat_share[2] == 1.0
    assert quality_flags(result, np.ones(3), sources)["not_a_face"].tolist() == [False, True, True]
    # the rule itself: missed (face_detected False) is not enough
    missed = replace(result, face_detected=np.zeros(3, bool), faceless=np.array([False, False, True]),
                     flat_share=np.array([0.05, 0.5, 0.05]))
    assert quality_flags(missed, np.ones(3), sources)["not_a_face"].tolist() == [False, True, True]
    assert "not_a_face" not in quality_flags(replace(result, faceless=None), np.ones(3), sources)  # not searched


def test_ferplus_face_check_counts_agreement() -> None:
    from fercurate.audit.quality import ferplus_face_check

    flags = [["ferplus-no-votes"], ["ferplus-not-face"], None, ["ferplus-no-majority"], ["ferplus-no-image"], []]
    not_a_face = np.array([True, False, True, False, False, False])
    missed = np.array([True, True, True, True, False, False])
    check = ferplus_face_check(flags, not_a_face, missed)
    assert check == {"ferplus_non_faces": 3,
                     "not_a_face": {"flagged": 2, "ferplus_non_faces": 1, "precision": 0.5, "recall": 0.3333},
                     "face_not_found": {"flagged": 4, "ferplus_non_faces": 2, "precision": 0.5, "recall": 0.6667}}
    assert ferplus_face_check([["low-light"], None], not_a_face[:2], missed[:2]) is None  # no FER+ ingested
