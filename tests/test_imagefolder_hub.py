"""Image-folder trees and Hugging Face datasets (save_to_disk and parquet copies; no network)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ingest_rows, skip_pairs

from fercurate.sources import HubDataset, ImageFolder, SourceError, open_source
from fercurate.sources.imagefolder import parse_label_map
from fercurate.workspace import Workspace




def _stored(workspace: Workspace, row: dict) -> np.ndarray:
    """The stored image as RGB (or gray) pixels."""
    with Image.open(workspace.image_path(row["filepath"])) as image:
        return np.asarray(image)


def _pixels(seed: int, shape: tuple[int, ...] = (12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# image folders


@pytest.fixture()
def faces(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "faces"
    written = {"train/happy/a": _pixels(1), "misc/selfie/c": _pixels(3, (12, 10, 3))}
    for relpath in ("train/happy", "test/Angry", "misc/selfie"):
        (root / relpath).mkdir(parents=True)
    Image.fromarray(written["train/happy/a"]).save(root / "train/happy/a.png")
    Image.fromarray(written["misc/selfie/c"]).save(root / "misc/selfie/c.png")
    Image.fromarray(_pixels(2, (16, 16))).save(root / "test/Angry/b.jpg", quality=95)
    (root / "train" / "happy" / "notes.txt").write_text("not an image")
    return root, written


def test_imagefolder(tmp_path: Path, faces) -> None:
    root, written = faces
    source = ImageFolder(root)
    assert source.options() == {"label_map": {}, "collection": "faces", "max_member_bytes": 64 * 1024 * 1024}
    workspace, rows = ingest_rows(tmp_path, source)
    assert {row_id: (row["label"], row["native_label"], row["source_split"], row["origin"])
            for row_id, row in rows.items()} == {
        "imagefolder/faces/train/happy/a": ("happiness", "happy", "train", "train/happy/a.png"),
        "imagefolder/faces/test/Angry/b": ("anger", "Angry", "test", "test/Angry/b.jpg"),
    }
    assert {row["source"] for row in rows.values()} == {"imagefolder"}
    happy = rows["imagefolder/faces/train/happy/a"]
    assert (happy["width"], happy["height"], happy["channels"]) == (10, 12, 1)
    np.testing.assert_array_equal(_stored(workspace, happy), written["train/happy/a"])
    angry = rows["imagefolder/faces/test/Angry/b"]
    assert (angry["width"], angry["height"], angry["channels"]) == (16, 16, 1)
    assert skip_pairs(workspace) == [("misc/selfie/c.png", "unknown class folder")]


def test_imagefolder_label_map(tmp_path: Path, faces) -> None:
    root, written = faces
    source = open_source("imagefolder", root, label_map="selfie=neutral", collection="mine")
    assert source.options() == {"label_map": {"selfie": "neutral"}, "collection": "mine", "max_member_bytes": 64 * 1024 * 1024}
    workspace, rows = ingest_rows(tmp_path, source)
    assert sorted(rows) == ["imagefolder/mine/misc/selfie/c", "imagefolder/mine/test/Angry/b",
                            "imagefolder/mine/train/happy/a"]
    selfie = rows["imagefolder/mine/misc/selfie/c"]
    assert (selfie["label"], selfie["native_label"], selfie["source_split"]) == ("neutral", "selfie", None)
    assert (selfie["width"], selfie["height"], selfie["channels"]) == (10, 12, 3)
    np.testing.assert_array_equal(_stored(workspace, selfie), written["misc/selfie/c"])
    assert skip_pairs(workspace) == []


def test_label_map_overrides_synonyms(tmp_path: Path, faces) -> None:
    root, _ = faces
    _, rows = ingest_rows(tmp_path, ImageFolder(root, label_map={"happy": "contempt", "selfie": "fear"}))
    assert {row_id: row["label"] for row_id, row in rows.items()} == {
        "imagefolder/faces/train/happy/a": "contempt",
        "imagefolder/faces/test/Angry/b": "anger",
        "imagefolder/faces/misc/selfie/c": "fear",
    }


def test_parse_label_map() -> None:
    assert parse_label_map(None) == {}
    assert parse_label_map(" selfie = neutral ,grin=happiness,") == {"selfie": "neutral", "grin": "happiness"}
    assert parse_label_map({"x": "anger"}) == {"x": "anger"}
    with pytest.raises(SourceError, match="not one of"):
        parse_label_map("selfie=joyful")
    with pytest.raises(SourceError, match="NATIVE=EMOTION"):
        parse_label_map("selfie")


def test_bad_label_map_raises(faces) -> None:
    root, _ = faces
    with pytest.raises(SourceError, match="'selfie' to 'happy'"):
        ImageFolder(root, label_map="selfie=happy")


def test_corrupt_image_skipped(tmp_path: Path, faces) -> None:
    root, _ = faces
    (root / "train" / "happy" / "broken.png").write_bytes(np.random.default_rng(7).bytes(200))
    workspace, rows = ingest_rows(tmp_path, ImageFolder(root))
    assert sorted(rows) == ["imagefolder/faces/test/Angry/b", "imagefolder/faces/train/happy/a"]
    assert skip_pairs(workspace) == [("misc/selfie/c.png", "unknown class folder"),
                                 ("train/happy/broken.png", "unreadable image")]


def test_imagefolder_archive(tmp_path: Path, faces) -> None:
    root, written = faces
    archive = tmp_path / "faces.v2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="faces")
    workspace, rows = ingest_rows(tmp_path, ImageFolder(archive))
    assert sorted(rows) == ["imagefolder/faces/faces/test/Angry/b", "imagefolder/faces/faces/train/happy/a"]
    assert rows["imagefolder/faces/faces/train/happy/a"]["source_split"] == "train"
    np.testing.assert_array_equal(_stored(workspace, rows["imagefolder/faces/faces/train/happy/a"]),
                                  written["train/happy/a"])


def test_imagefolder_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    with pytest.raises(SourceError, match="holds no image files"):
        Workspace(tmp_path / "ws").ingest(ImageFolder(tmp_path / "empty"))


# Hugging Face datasets

CLASS_NAMES = ["happy", "sad", "angry", "calm", "weird"]
TRAIN_LABELS = [0, 1, 2, 3, 4, 0]
TEST_LABELS = [4, 2, 1]
CANONICAL = {0: "happiness", 1: "sadness", 2: "anger", 3: "neutral"}  # by name, not FER2013's index


@pytest.fixture()
def hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # keep ~ clean
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return datasets


def _split(datasets, seed: int, labels: list[int | None], colour: bool = False):
    shape = (6, 8, 3) if colour else (6, 8)
    pixels = [_pixels(seed * 100 + index, shape) for index in range(len(labels))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    split = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(array) for array in pixels], "label": labels}, features=features)
    return split, pixels


@pytest.fixture()
def saved_dict(hf, tmp_path: Path):
    train, train_pixels = _split(hf, 1, TRAIN_LABELS)
    test, test_pixels = _split(hf, 2, TEST_LABELS, colour=True)
    path = tmp_path / "fer-hub"
    hf.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path, {"train": train_pixels, "test": test_pixels}


def _expected(split: str, labels: list[int], label_map: dict[int, str] = CANONICAL) -> dict[str, tuple]:
    return {f"{index:06d}": (label_map[label], CLASS_NAMES[label], split)
            for index, label in enumerate(labels) if label in label_map}


def _by_index(rows: dict[str, dict], prefix: str) -> dict[str, tuple]:
    return {row_id.removeprefix(prefix): (row["label"], row["native_label"], row["source_split"])
            for row_id, row in rows.items() if row_id.startswith(prefix)}


def test_hub_dataset_dict(tmp_path: Path, saved_dict) -> None:
    path, pixels = saved_dict
    source = HubDataset(path)
    assert source.options() == {"splits": ["train", "test"], "image_column": "image",
                                "label_column": "label", "label_map": {}}
    assert source.size_hint() == 9
    workspace, rows = ingest_rows(tmp_path, source)
    assert len(rows) == 5 + 2
    assert _by_index(rows, "hub:local/fer-hub/train/") == _expected("train", TRAIN_LABELS)
    assert _by_index(rows, "hub:local/fer-hub/test/") == _expected("test", TEST_LABELS)
    assert {row["source"] for row in rows.values()} == {"hub:local/fer-hub"}
    assert rows["hub:local/fer-hub/train/000002"]["origin"] == "train[2]"
    for split, arrays in pixels.items():
        for index, array in enumerate(arrays):
            row = rows.get(f"hub:local/fer-hub/{split}/{index:06d}")
            if row is not None:
                assert row["channels"] == (3 if split == "test" else 1)
                np.testing.assert_array_equal(_stored(workspace, row), array)
    assert skip_pairs(workspace) == [("test[0]", "unknown class"), ("train[4]", "unknown class")]


def test_hub_label_map(tmp_path: Path, saved_dict) -> None:
    path, _ = saved_dict
    workspace, rows = ingest_rows(tmp_path, open_source("hub", path, label_map="weird=fear,calm=contempt"))
    labels = {**CANONICAL, 3: "contempt", 4: "fear"}
    assert _by_index(rows, "hub:local/fer-hub/train/") == _expected("train", TRAIN_LABELS, labels)
    assert _by_index(rows, "hub:local/fer-hub/test/") == _expected("test", TEST_LABELS, labels)
    assert len(rows) == 9
    assert skip_pairs(workspace) == []


def test_hub_split(tmp_path: Path, saved_dict) -> None:
    path, pixels = saved_dict
    source = open_source("hub", path, split="test")
    assert source.options()["splits"] == ["test"]
    workspace, rows = ingest_rows(tmp_path, source)
    assert sorted(rows) == ["hub:local/fer-hub/test/000001", "hub:local/fer-hub/test/000002"]
    assert _by_index(rows, "hub:local/fer-hub/test/") == _expected("test", TEST_LABELS)
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/fer-hub/test/000002"]), pixels["test"][2])
    assert skip_pairs(workspace) == [("test[0]", "unknown class")]
    with pytest.raises(SourceError, match="has no split 'validation'"):
        HubDataset(path, split="validation")


def test_hub_plain_dataset(hf, tmp_path: Path) -> None:
    dataset, pixels = _split(hf, 3, [2, 4, 0])
    path = tmp_path / "single"
    dataset.save_to_disk(str(path))
    workspace, rows = ingest_rows(tmp_path, HubDataset(path))
    assert _by_index(rows, "hub:local/single/train/") == {"000000": ("anger", "angry", "train"),
                                                          "000002": ("happiness", "happy", "train")}
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/single/train/000002"]), pixels[2])
    assert skip_pairs(workspace) == [("train[1]", "unknown class")]


def test_hub_parquet(hf, tmp_path: Path) -> None:
    dataset, pixels = _split(hf, 4, [1, 3, 4, 0])
    path = tmp_path / "exported.parquet"
    dataset.to_parquet(str(path))
    workspace, rows = ingest_rows(tmp_path, HubDataset(path))
    assert {row["source"] for row in rows.values()} == {"hub:local/exported"}
    assert _by_index(rows, "hub:local/exported/train/") == {"000000": ("sadness", "sad", "train"),
                                                            "000001": ("neutral", "calm", "train"),
                                                            "000003": ("happiness", "happy", "train")}
    for index in (0, 1, 3):
        np.testing.assert_array_equal(_stored(workspace, rows[f"hub:local/exported/train/{index:06d}"]),
                                      pixels[index])
    assert skip_pairs(workspace) == [("train[2]", "unknown class")]


def test_hub_missing_labels_and_images(hf, tmp_path: Path) -> None:
    """A ClassLabel of -1 (or None) means 'no label', not the last class ('angry' here); a row
    without an image is skipped, not a crash."""
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["happy", "sad", "angry"])})
    pixels = [_pixels(50 + index) for index in range(4)]
    images = [Image.fromarray(pixels[0]), Image.fromarray(pixels[1]), None, Image.fromarray(pixels[3])]
    dataset = hf.Dataset.from_dict({"image": images, "label": [0, -1, 1, None]}, features=features)
    path = tmp_path / "gaps"
    dataset.save_to_disk(str(path))
    workspace, rows = ingest_rows(tmp_path, HubDataset(path))
    assert _by_index(rows, "hub:local/gaps/train/") == {"000000": ("happiness", "happy", "train")}
    assert skip_pairs(workspace) == [("train[1]", "missing label"), ("train[2]", "missing image"),
                                 ("train[3]", "missing label")]


def test_hub_errors(hf, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a hub repo name"):
        HubDataset(tmp_path / "no" / "such" / "folder")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="neither a save_to_disk folder nor parquet files"):
        HubDataset(tmp_path / "plain")
    unlabelled = hf.Dataset.from_dict({"image": [Image.fromarray(_pixels(9))], "caption": ["a face"]},
                                      features=hf.Features({"image": hf.Image(), "caption": hf.Value("string")}))
    unlabelled.save_to_disk(str(tmp_path / "captions"))
    with pytest.raises(SourceError, match="has no label column"):
        HubDataset(tmp_path / "captions")


def test_hub_named_columns(hf, tmp_path: Path) -> None:
    """A string label column, named by the user, is mapped by its text."""
    pixels = [_pixels(60 + index) for index in range(3)]
    dataset = hf.Dataset.from_dict(
        {"photo": [Image.fromarray(array) for array in pixels], "emotion": ["Surprised", "bored", "fearful"]},
        features=hf.Features({"photo": hf.Image(), "emotion": hf.Value("string")}))
    path = tmp_path / "named"
    dataset.save_to_disk(str(path))
    workspace, rows = ingest_rows(tmp_path, HubDataset(path, label_column="emotion"))
    assert _by_index(rows, "hub:local/named/train/") == {"000000": ("surprise", "Surprised", "train"),
                                                         "000002": ("fear", "fearful", "train")}
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/named/train/000002"]), pixels[2])
    assert skip_pairs(workspace) == [("train[1]", "unknown class")]


def test_hub_images_by_path(hf, tmp_path: Path) -> None:
    """Image cells that hold only a path are read from that file; a missing file is an unreadable image."""
    pixels = _pixels(70)
    kept, gone = tmp_path / "kept.png", tmp_path / "gone.png"
    Image.fromarray(pixels).save(kept)
    Image.fromarray(_pixels(71)).save(gone)
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=CLASS_NAMES)})
    dataset = hf.Dataset.from_dict({"image": [str(kept), str(gone)], "label": [1, 2]}, features=features)
    path = tmp_path / "by-path.parquet"
    dataset.to_parquet(str(path))  # keeps the paths (save_to_disk would embed the bytes)
    gone.unlink()
    workspace, rows = ingest_rows(tmp_path, HubDataset(path))
    assert _by_index(rows, "hub:local/by-path/train/") == {"000000": ("sadness", "sad", "train")}
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/by-path/train/000000"]), pixels)
    assert skip_pairs(workspace) == [("train[1]", "unreadable image")]


def test_hub_parquet_snapshot_splits(hf, tmp_path: Path) -> None:
    """A hub snapshot's data/<split>-00000-of-00001.parquet files keep their splits (the test
    split must not be read as train); the dataset card beside them is ignored."""
    snapshot = tmp_path / "snap"
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n# faces\n")
    train, train_pixels = _split(hf, 5, [0, 1])
    test, test_pixels = _split(hf, 6, [2, 3, 4])
    train.to_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    test.to_parquet(str(snapshot / "data" / "test-00000-of-00001.parquet"))
    source = HubDataset(snapshot)
    assert source.options()["splits"] == ["train", "test"]
    workspace, rows = ingest_rows(tmp_path, source)
    assert _by_index(rows, "hub:local/snap/train/") == _expected("train", [0, 1])
    assert _by_index(rows, "hub:local/snap/test/") == _expected("test", [2, 3, 4])
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/snap/test/000001"]), test_pixels[1])
    np.testing.assert_array_equal(_stored(workspace, rows["hub:local/snap/train/000000"]), train_pixels[0])
    assert skip_pairs(workspace) == [("test[2]", "unknown class")]
    assert list(HubDataset(snapshot, split="test").splits) == ["test"]
