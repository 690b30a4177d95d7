"""Tests for fercurate.sources.demo: the drawn faces, their classes, the fer2013.csv they are written as, and
the problems planted into it, which the real audit must find exactly (fercurate.audit.planted)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercurate.audit.planted import all_found, display_rows, find_planted, planted_findings
from fercurate.audit.quality import perceptual_hashes
from fercurate.phash import image_hashes
from fercurate.audit.result import AuditResult
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.sources.base import Face
from fercurate.sources.demo import (
    DEMO_EMOTION_CODES, MIN_HASH_DISTANCE, PLANT_FROM, PLANTED_KINDS, PlantedDemo, draw_demo_faces,
    draw_landscape, open_demo, planted_path, read_planted, write_demo_csv,
)
from fercurate.sources.fer2013 import Fer2013Csv
from fercurate.workspace import Workspace

PER_CLASS = 40


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    return draw_demo_faces(PER_CLASS, seed=0)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="ascii") as handle:
        reader = csv.reader(handle)
        return next(reader), list(reader)


def test_emotion_codes_are_fer2013s() -> None:
    assert DEMO_EMOTION_CODES == {
        "anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6,
    }


def test_shapes_dtypes_and_class_counts(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    assert images.shape == (7 * PER_CLASS, 48, 48)
    assert images.dtype == np.uint8
    assert codes.shape == (7 * PER_CLASS,)
    assert np.issubdtype(codes.dtype, np.integer)
    assert np.bincount(codes, minlength=7).tolist() == [PER_CLASS] * 7
    assert codes.tolist() == sorted(codes.tolist())  # grouped by code, as documented
    assert images.std() > 20  # not a blank canvas


def test_small_and_invalid_sizes() -> None:
    images, codes = draw_demo_faces(per_class=1, seed=3)
    assert images.shape == (7, 48, 48) and codes.tolist() == list(range(7))
    with pytest.raises(ValueError):
        draw_demo_faces(per_class=0)


def test_deterministic_per_seed(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    again_images, again_codes = draw_demo_faces(PER_CLASS, seed=0)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(codes, again_codes)
    other_images, other_codes = draw_demo_faces(PER_CLASS, seed=1)
    np.testing.assert_array_equal(codes, other_codes)
    assert not np.array_equal(images, other_images)


def test_no_two_faces_are_equal(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = faces
    assert len({image.tobytes() for image in images}) == len(images)


def test_happiness_and_sadness_differ_at_the_mouth(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    happy = images[codes == DEMO_EMOTION_CODES["happiness"]].astype(float).mean(axis=0)
    sad = images[codes == DEMO_EMOTION_CODES["sadness"]].astype(float).mean(axis=0)
    difference = np.abs(happy - sad)
    mouth = difference[31:44, 12:36]
    assert mouth.mean() > 20
    # The background strip differs only as much as 40 random backgrounds average out.
    assert mouth.mean() > 2.5 * difference[:, :4].mean()
    # A smile dips in the middle, a frown arches: the darkest row of the mouth's centre is lower
    # for happiness than for sadness.
    centre = slice(20, 28)
    assert happy[30:46, centre].mean(axis=1).argmin() > sad[30:46, centre].mean(axis=1).argmin() + 1


def test_nearest_class_mean_beats_chance(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    pixels = images.reshape(len(images), -1).astype(float)
    # Faces differ in tone, background and light on purpose: compare their standardised pixels.
    pixels = (pixels - pixels.mean(axis=1, keepdims=True)) / pixels.std(axis=1, keepdims=True)
    train = np.arange(len(images)) % 2 == 0
    means = np.stack([pixels[train & (codes == code)].mean(axis=0) for code in range(7)])
    distances = ((pixels[~train, None, :] - means[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == codes[~train]).mean()
    assert accuracy > 0.7  # chance is 1/7


def test_write_demo_csv_round_trip(tmp_path: Path, faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    target = tmp_path / "nested" / "fer2013.csv"
    assert write_demo_csv(target, per_class=PER_CLASS, seed=0) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["fer2013.csv"]  # no temporary left behind

    header, rows = read_rows(target)
    assert header == ["emotion", "pixels", "Usage"]
    assert len(rows) == 7 * PER_CLASS
    pixels = []
    for emotion, pixel_field, usage in rows:
        values = pixel_field.split(" ")
        assert len(values) == 2304
        numbers = [int(value) for value in values]
        assert all(0 <= number <= 255 for number in numbers)
        assert emotion in {str(code) for code in range(7)}
        assert usage in {"Training", "PublicTest", "PrivateTest"}
        pixels.append(numbers)

    # Row i is face order[i], as write_demo_csv documents.
    order = np.random.default_rng(0).permutation(7 * PER_CLASS)
    np.testing.assert_array_equal(np.array(pixels, dtype=np.uint8).reshape(-1, 48, 48), images[order])
    assert [int(row[0]) for row in rows] == codes[order].tolist()
    assert not np.array_equal(order, np.arange(order.size))  # really shuffled

    # 20% of each class is test data, split evenly; the rest is training data.
    per_class_usage = Counter((row[0], row[2]) for row in rows)
    for code in range(7):
        assert per_class_usage[str(code), "PublicTest"] == 4
        assert per_class_usage[str(code), "PrivateTest"] == 4
        assert per_class_usage[str(code), "Training"] == PER_CLASS - 8


def test_write_demo_csv_test_share(tmp_path: Path) -> None:
    _, rows = read_rows(write_demo_csv(tmp_path / "a.csv", per_class=10, seed=5, test_share=0.3))
    usage = Counter(row[2] for row in rows)
    assert usage == {"Training": 49, "PublicTest": 14, "PrivateTest": 7}  # 3 per class: 2 public, 1 private
    _, rows = read_rows(write_demo_csv(tmp_path / "b.csv", per_class=10, seed=5, test_share=0.0))
    assert {row[2] for row in rows} == {"Training"}
    with pytest.raises(ValueError):
        write_demo_csv(tmp_path / "c.csv", test_share=1.5)
    assert not (tmp_path / "c.csv").exists()


def test_write_demo_csv_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "fer2013.csv"
    target.write_text("stale\n")
    write_demo_csv(target, per_class=2, seed=0)
    header, rows = read_rows(target)
    assert header == ["emotion", "pixels", "Usage"] and len(rows) == 14


def test_fer2013_reader_ingests_the_demo(tmp_path: Path, faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    path = write_demo_csv(tmp_path / "fer2013.csv", per_class=PER_CLASS, seed=0)
    items = list(Fer2013Csv(path, dataset="demo"))
    assert len(items) == 7 * PER_CLASS and all(isinstance(item, Face) for item in items)
    order = np.random.default_rng(0).permutation(7 * PER_CLASS)
    label_of_code = {code: label for label, code in DEMO_EMOTION_CODES.items()}
    for item, index in zip(items, order):
        assert item.fields["source"] == "demo"
        assert item.fields["label"] == label_of_code[int(codes[index])]
        np.testing.assert_array_equal(item.image, images[index])


# --- every face its own: no two are near duplicates ------------------------------------------------------------


def audit_hashes(images: np.ndarray) -> np.ndarray:
    """The audit's pHashes of 48x48 faces (it hashes 32x32 INTER_AREA thumbnails)."""
    thumbnails = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA) for image in images])
    return perceptual_hashes(thumbnails.astype(np.float32))


def hash_distances(hashes: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances, with the diagonal set past any threshold."""
    distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :]).astype(int)
    np.fill_diagonal(distances, 65)
    return distances


def test_no_two_faces_are_near_duplicates(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    hashes = audit_hashes(images)
    np.testing.assert_array_equal(image_hashes(images), hashes)  # the hash the demo draws with is the audit's
    distances = hash_distances(hashes)
    assert distances.min() >= MIN_HASH_DISTANCE > 4  # 4: the audit's near-duplicate distance
    # Not only the redraws keep faces apart: half of all pairs differ in at least 20 of 64 bits,
    # faces of different expressions as much as faces of one.
    same_class = codes[:, None] == codes[None, :]
    assert np.median(distances[~same_class]) >= 20 and np.median(distances[same_class & (distances < 65)]) >= 20


def test_the_landscape_is_no_face_and_not_blank() -> None:
    landscape = draw_landscape(0)
    assert landscape.shape == (48, 48) and landscape.dtype == np.uint8
    assert landscape.std() > 20 and 60 < landscape.mean() < 200
    assert cv2.Laplacian(landscape, cv2.CV_32F).var() > 150  # not blurry either
    np.testing.assert_array_equal(landscape, draw_landscape(0))


# --- planted problems, known by construction --------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PlantedDemo]:
    path = write_demo_csv(tmp_path_factory.mktemp("planted") / "fer2013.csv", per_class=PER_CLASS, seed=0,
                          plant=True)
    planted = read_planted(path)
    assert planted is not None
    return path, planted


def test_planting_keeps_rows_splits_and_class_counts(planted_csv: tuple[Path, PlantedDemo], tmp_path: Path) -> None:
    path, planted = planted_csv
    assert sorted(p.name for p in path.parent.iterdir()) == ["fer2013.csv", "fer2013.planted.json"]
    assert planted_path(path) == path.parent / "fer2013.planted.json"
    assert (planted.csv, planted.dataset, planted.per_class, planted.seed, planted.rows) == (
        "fer2013.csv", "demo", PER_CLASS, 0, 7 * PER_CLASS)
    assert [problem.kind for problem in planted.problems] == list(PLANTED_KINDS)
    assert len(set(planted.ids())) == len(planted.ids()) == 2 + 2 + 2 + 3 + 1 + 1  # every row planted once
    _, rows = read_rows(path)
    _, clean = read_rows(write_demo_csv(tmp_path / "clean.csv", per_class=PER_CLASS, seed=0))
    assert not planted_path(tmp_path / "clean.csv").exists()
    assert Counter((row[0], row[2]) for row in rows) == Counter((row[0], row[2]) for row in clean)
    assert [row[2] for row in rows] == [row[2] for row in clean]
    changed = [i for i, (row, before) in enumerate(zip(rows, clean)) if row != before]
    unchanged_originals = {planted.ids(kind)[0] for kind in
                           ("exact_copy_across_splits", "near_copy_across_splits", "copy_with_other_label")}
    assert {f"demo/{rows[i][2]}/{i:05d}" for i in changed} == set(planted.ids()) - unchanged_originals


def test_planted_rows_hold_what_the_record_says(planted_csv: tuple[Path, PlantedDemo]) -> None:
    path, planted = planted_csv
    items = {item.fields["id"]: item for item in Fer2013Csv(path, dataset="demo")}  # ids as ingest names them
    assert set(planted.ids()) <= set(items)
    image = {row_id: item.image for row_id, item in items.items()}
    label = {row_id: item.fields["label"] for row_id, item in items.items()}
    split = {row_id: item.fields["source_split"] for row_id, item in items.items()}
    for problem in planted.problems:
        assert [label[row_id] for row_id in problem.ids] == list(problem.labels), problem.kind
    problem = {problem.kind: problem for problem in planted.problems}

    leaked, copy = problem["exact_copy_across_splits"].ids
    np.testing.assert_array_equal(image[leaked], image[copy])
    assert (split[leaked], split[copy]) == ("Training", "PrivateTest") and label[leaked] == label[copy]

    original, near = problem["near_copy_across_splits"].ids
    assert not np.array_equal(image[original], image[near]) and label[original] == label[near]
    assert (split[original], split[near]) == ("Training", "PublicTest")
    pair = audit_hashes(np.stack([image[original], image[near]]))
    assert 1 <= np.bitwise_count(pair[0] ^ pair[1]) <= 4

    original, other = problem["copy_with_other_label"].ids
    np.testing.assert_array_equal(image[original], image[other])
    assert label[original] != label[other] and split[original] == split[other] == "Training"
    assert problem["copy_with_other_label"].shows == (label[original], label[original])

    flipped = problem["flipped_labels"]
    assert all(shows != given for shows, given in zip(flipped.shows, flipped.labels))
    assert list(flipped.labels) == list(flipped.shows[1:] + flipped.shows[:1])  # a cycle: class counts stay
    assert flipped.shows == ("happiness", "surprise", "sadness")  # expressions far apart, drawn plain to read

    (blank,) = problem["blank_image"].ids
    assert image[blank].std() == 0 and problem["blank_image"].shows == ("blank",)
    (non_face,) = problem["non_face"].ids
    np.testing.assert_array_equal(image[non_face], draw_landscape(0))

    # The copies are the only near duplicates: every other pair stays more than 4 bits apart.
    ids = list(items)
    distances = hash_distances(audit_hashes(np.stack([image[row_id] for row_id in ids])))
    close = {tuple(sorted((ids[i], ids[j]))) for i, j in zip(*np.nonzero(np.triu(distances <= 4)))}
    assert close == {tuple(sorted(problem[kind].ids)) for kind in
                     ("exact_copy_across_splits", "near_copy_across_splits", "copy_with_other_label")}


def test_record_round_trips_and_goes_stale_with_its_csv(planted_csv: tuple[Path, PlantedDemo],
                                                         tmp_path: Path) -> None:
    _, planted = planted_csv
    assert PlantedDemo.from_json(planted.to_json()) == planted
    path = write_demo_csv(tmp_path / "demo.csv", per_class=10, seed=1, plant=True)  # planting works on 10 a class
    assert read_planted(path) is not None and read_planted(path).per_class == 10
    path.write_text(path.read_text().replace("Training", "PublicTest", 1))  # the CSV changed since
    assert read_planted(path) is None
    write_demo_csv(path, per_class=10, seed=1)  # rewritten without problems: the record goes
    assert not planted_path(path).exists() and read_planted(path) is None
    with pytest.raises(ValueError):
        write_demo_csv(tmp_path / "small.csv", per_class=4, seed=0, plant=True)  # too few test faces to plant


def test_open_demo_plants_only_into_demos_large_enough(tmp_path: Path) -> None:
    open_demo(tmp_path / "large")
    assert read_planted(tmp_path / "large" / "fer2013-demo.csv") is not None
    open_demo(tmp_path / "small", per_class=PLANT_FROM - 1)  # a test fixture's demo: clean
    assert not planted_path(tmp_path / "small" / "fer2013-demo.csv").exists()
    open_demo(tmp_path / "large", plant=False)
    assert read_planted(tmp_path / "large" / "fer2013-demo.csv") is None


# --- the audit finds exactly what was planted -------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, AuditResult, PlantedDemo]:
    """The default demo, ingested as `fercurate ingest` does and audited with the default options."""
    root = tmp_path_factory.mktemp("audited")
    space = Workspace(root / "ws")
    report = space.ingest(open_demo(root / "ws" / "demo-data"))
    assert (report.rows_added, report.images_written) == (280, 278)  # the two exact copies share a file
    planted = find_planted(space)
    assert planted is not None
    return space, audit_workspace(space, AuditOptions()), planted


def test_every_demo_face_is_a_face_and_only_the_planted_rows_are_flagged(
        audited_demo: tuple[Workspace, AuditResult, PlantedDemo]) -> None:
    _, result, planted = audited_demo
    rows = result.rows.set_index("id")
    no_face = set(rows.index[~rows["face_detected"].astype(bool)])
    assert no_face == set(planted.ids("blank_image") + planted.ids("non_face"))  # dlib finds all 278 faces
    summary = result.summary
    assert summary["duplicates"] == {
        "exact_groups": 2, "exact_duplicate_images": 2, "near_groups": 3, "rows_in_near_groups": 6,
        "groups_across_splits": 2, "groups_with_conflicting_labels": 1, "max_distance": 4}
    assert summary["quality"] == {"is_blank": 1, "is_blurry": 1, "too_dark": 0, "too_bright": 0, "size_anomaly": 0,
                                  "unreadable": 0, "missing_image": 0, "face_not_found": 2, "not_a_face": 2}
    assert set(planted.ids("flipped_labels")) <= set(result.label_issues["id"])


def test_the_audit_finds_exactly_the_planted_problems(audited_demo: tuple[Workspace, AuditResult, PlantedDemo]) -> None:
    _, result, planted = audited_demo
    table = planted_findings(result, planted)
    assert table["kind"].tolist() == [*PLANTED_KINDS, "other"]
    assert all_found(table), table.drop(columns="what").to_string()
    assert table["found"].iloc[-1] == []  # nothing the demo did not plant
    for row in table.iloc[:-1].itertuples():
        assert sorted(row.found) == sorted(row.planted), row.problem
    shown = display_rows(table)
    assert [line[-1] for line in shown] == ["yes"] * 7
    assert shown[0][2].startswith("Training/") and "demo/" not in shown[0][2]


def test_findings_that_nothing_planted_explains_are_reported(
        audited_demo: tuple[Workspace, AuditResult, PlantedDemo]) -> None:
    _, result, planted = audited_demo
    rows = result.rows.copy()
    stranger = rows.index[~rows["id"].isin(planted.ids())][0]
    rows.loc[stranger, "is_blurry"] = True
    flip = rows.index[rows["id"] == planted.ids("flipped_labels")[0]][0]
    rows.loc[flip, "label_issue"] = False
    table = planted_findings(AuditResult(rows, result.groups, result.label_issues, result.balance, result.summary,
                                         result.embeddings), planted)
    assert not all_found(table)
    by_kind = table.set_index("kind")
    assert by_kind.at["flipped_labels", "match"] is not None and not by_kind.at["flipped_labels", "match"]
    assert by_kind.at["other", "found"] == [f"{rows.at[stranger, 'id']} (blurry)"]
    no_noise = planted_findings(AuditResult(rows.drop(columns=["label_issue"]), result.groups, result.label_issues,
                                            result.balance, result.summary, result.embeddings), planted)
    assert no_noise.set_index("kind").at["flipped_labels", "match"] is None  # not checked, not failed
