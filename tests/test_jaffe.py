"""JAFFE reader: file-name parsing, palette TIFFs, documented demographics and semantic ratings."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ingest_rows, skip_pairs

from fercurate.sources import Jaffe, SourceError, open_source
from fercurate.sources.jaffe import read_jaffe_ratings
from fercurate.workspace import Workspace

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
JAFFE_SAMPLE = SHARED_DATA / "jaffe" / "jaffe-sample"

SIZE = 32
RATINGS = """\
#HAP SAD SUR ANG DIS FEA PIC
1 2.87 2.52 2.10 1.97 1.97 2.06 KA-AN1
2 4.50 1.20 1.90 1.10 1.00 1.05 KL-HA2

"""


def _indices(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)


def _palette_tiff(path: Path, indices: np.ndarray) -> np.ndarray:
    """A palette TIFF whose gray palette is inverted (index i shows gray 255 - i); returns the grays."""
    image = Image.fromarray(indices, mode="L").convert("P")  # keeps the index values
    image.putdata(indices.ravel().tolist())
    image.putpalette([value for i in range(256) for value in (255 - i,) * 3])
    image.save(path, format="TIFF")
    with Image.open(path) as check:
        assert check.mode == "P"
    return (255 - indices.astype(np.int16)).astype(np.uint8)


def _gray_tiff(path: Path, pixels: np.ndarray) -> np.ndarray:
    Image.fromarray(pixels, mode="L").save(path, format="TIFF")
    return pixels


@pytest.fixture()
def jaffe(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "jaffe"
    root.mkdir()
    pixels = {
        "KA.AN1.39": _palette_tiff(root / "KA.AN1.39.tiff", _indices(1)),
        "KA.NE2.27": _palette_tiff(root / "KA.NE2.27.tiff", _indices(2)),
        "KL.HA2.159": _gray_tiff(root / "KL.HA2.159.tiff", _indices(3)),
        "KL.SU1.164": _gray_tiff(root / "KL.SU1.164.tiff", _indices(4)),
    }
    _gray_tiff(root / "photo.tiff", _indices(5))
    _gray_tiff(root / "KA.XX1.1.tiff", _indices(6))
    (root / "README.txt").write_text("The Japanese Female Facial Expression (JAFFE) Database\n")
    return root, pixels




def test_rows(tmp_path: Path, jaffe) -> None:
    root, _ = jaffe
    workspace, rows = ingest_rows(tmp_path, Jaffe(root))
    assert {row_id: (row["label"], row["native_label"], row["subject_id"], row["origin"])
            for row_id, row in rows.items()} == {
        "jaffe/KA.AN1.39": ("anger", "AN", "KA", "KA.AN1.39.tiff"),
        "jaffe/KA.NE2.27": ("neutral", "NE", "KA", "KA.NE2.27.tiff"),
        "jaffe/KL.HA2.159": ("happiness", "HA", "KL", "KL.HA2.159.tiff"),
        "jaffe/KL.SU1.164": ("surprise", "SU", "KL", "KL.SU1.164.tiff"),
    }
    for row in rows.values():
        assert row["source"] == "jaffe"
        assert row["source_split"] is None
        assert row["label_source"] == "original"
        assert row["label_votes"] is None
        assert (row["gender"], row["gender_source"]) == ("female", "dataset-metadata")
        assert (row["ethnicity"], row["ethnicity_source"]) == ("japanese", "dataset-metadata")
        assert (row["age_group"], row["age_group_source"]) == ("unknown", "unknown")
        assert (row["width"], row["height"], row["channels"]) == (SIZE, SIZE, 1)
    assert skip_pairs(workspace) == [("KA.XX1.1.tiff", "unknown expression code"),
                                 ("photo.tiff", "unrecognised file name")]


def test_palette_stored_gray(tmp_path: Path, jaffe) -> None:
    root, pixels = jaffe
    workspace, rows = ingest_rows(tmp_path, Jaffe(root))
    for stem, expected in pixels.items():
        stored = cv2.imread(str(workspace.image_path(rows[f"jaffe/{stem}"]["filepath"])), cv2.IMREAD_UNCHANGED)
        assert stored.ndim == 2
        np.testing.assert_array_equal(stored, expected)
    # the palette was applied: stored grays are not the raw indices
    assert not np.array_equal(pixels["KA.AN1.39"], _indices(1))


def test_colour_palette_stays_colour(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    root.mkdir()
    image = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4), mode="L").convert("P")
    image.putdata(list(range(16)))
    image.putpalette([value for i in range(256) for value in (i, 0, 255 - i)])
    image.save(root / "KA.SA1.33.tiff", format="TIFF")
    _, rows = ingest_rows(tmp_path, Jaffe(root))
    assert rows["jaffe/KA.SA1.33"]["channels"] == 3


def test_ratings(tmp_path: Path, jaffe) -> None:
    root, _ = jaffe
    ratings = tmp_path / "semantic-ratings.txt"
    ratings.write_text(RATINGS)
    source = open_source("jaffe", root, ratings=ratings)
    assert source.options() == {"ratings": str(ratings), "max_member_bytes": 64 * 1024 * 1024}
    _, rows = ingest_rows(tmp_path, source)
    votes = {row_id: dict(row["label_votes"]) if row["label_votes"] else None for row_id, row in rows.items()}
    assert votes["jaffe/KA.AN1.39"] == pytest.approx(
        {"happiness": 2.87, "sadness": 2.52, "surprise": 2.10, "anger": 1.97, "disgust": 1.97, "fear": 2.06})
    assert votes["jaffe/KL.HA2.159"] == pytest.approx(
        {"happiness": 4.50, "sadness": 1.20, "surprise": 1.90, "anger": 1.10, "disgust": 1.00, "fear": 1.05})
    assert votes["jaffe/KA.NE2.27"] is None  # no row for the pose
    assert votes["jaffe/KL.SU1.164"] is None
    assert rows["jaffe/KA.AN1.39"]["label"] == "anger"  # ratings do not change the label


def test_read_ratings_header_variants(tmp_path: Path) -> None:
    path = tmp_path / "ratings.txt"
    path.write_text("# N HAP SAD SUR ANG DIS FEA PIC\n7 1.5 2.5 3.5 4.5 1.0 2.0 KM-SA4\nbad row here\n")
    assert read_jaffe_ratings(path) == {
        "KM.SA4": {"happiness": 1.5, "sadness": 2.5, "surprise": 3.5, "anger": 4.5, "disgust": 1.0, "fear": 2.0}}


def test_ratings_errors(tmp_path: Path, jaffe) -> None:
    root, _ = jaffe
    with pytest.raises(SourceError, match="does not exist"):
        Jaffe(root, ratings=tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("#HAP SAD SUR ANG DIS FEA PIC\n")
    with pytest.raises(SourceError, match="holds no JAFFE semantic ratings"):
        read_jaffe_ratings(empty)


def test_archive(tmp_path: Path, jaffe) -> None:
    root, pixels = jaffe
    archive = tmp_path / "jaffe.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(root.iterdir()):
            zipped.write(path, f"jaffedbase/{path.name}")
    workspace, rows = ingest_rows(tmp_path, Jaffe(archive))
    assert sorted(rows) == ["jaffe/KA.AN1.39", "jaffe/KA.NE2.27", "jaffe/KL.HA2.159", "jaffe/KL.SU1.164"]
    assert rows["jaffe/KA.AN1.39"]["origin"] == "jaffedbase/KA.AN1.39.tiff"
    stored = np.asarray(Image.open(io.BytesIO(workspace.image_path(rows["jaffe/KA.AN1.39"]["filepath"]).read_bytes())))
    np.testing.assert_array_equal(stored, pixels["KA.AN1.39"])
    assert skip_pairs(workspace) == [("jaffedbase/KA.XX1.1.tiff", "unknown expression code"),
                                 ("jaffedbase/photo.tiff", "unrecognised file name")]


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        Jaffe(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("no images")
    with pytest.raises(SourceError, match="holds no image files"):
        Workspace(tmp_path / "ws").ingest(Jaffe(tmp_path / "empty"))


@pytest.mark.skipif(not JAFFE_SAMPLE.is_dir(), reason=f"real JAFFE sample not present at {JAFFE_SAMPLE}")
def test_real_sample(tmp_path: Path) -> None:
    workspace, rows = ingest_rows(tmp_path, Jaffe(JAFFE_SAMPLE))
    assert len(rows) == 45
    subjects = [row["subject_id"] for row in rows.values()]
    assert {subject: subjects.count(subject) for subject in set(subjects)} == {"KA": 23, "KL": 22}
    assert {row["channels"] for row in rows.values()} == {1}
    assert {(row["width"], row["height"]) for row in rows.values()} == {(256, 256)}
    assert workspace.skips().num_rows == 0
    assert (rows["jaffe/KA.AN1.39"]["label"], rows["jaffe/KA.AN1.39"]["subject_id"]) == ("anger", "KA")
