"""Tests for fercurate.sources.demo: the drawn faces, their classes, and the fer2013.csv they are written as."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fercurate.sources.demo import DEMO_EMOTION_CODES, draw_demo_faces, write_demo_csv
from fercurate.sources.base import Face
from fercurate.sources.fer2013 import Fer2013Csv

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
    assert mouth.mean() > 5 * difference[:, :4].mean()  # the background strip barely differs
    # A smile dips in the middle, a frown arches: the darkest row of the mouth's centre is lower
    # for happiness than for sadness.
    centre = slice(20, 28)
    assert happy[30:46, centre].mean(axis=1).argmin() > sad[30:46, centre].mean(axis=1).argmin() + 2


def test_nearest_class_mean_beats_chance(faces: tuple[np.ndarray, np.ndarray]) -> None:
    images, codes = faces
    pixels = images.reshape(len(images), -1).astype(float)
    train = np.arange(len(images)) % 2 == 0
    means = np.stack([pixels[train & (codes == code)].mean(axis=0) for code in range(7)])
    distances = ((pixels[~train, None, :] - means[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == codes[~train]).mean()
    assert accuracy > 0.6  # chance is 1/7


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
