"""FER2013: both fer2013.csv header variants, bad rows, block boundaries, and the image-folder release."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv

from fercurate.sources import SourceError, open_source
from fercurate.sources import fer2013 as fer2013_module
from fercurate.workspace import Workspace

GOOD_ROWS = [("0", pixel_string(face_pixels(0)), "Training"),
             ("3", pixel_string(face_pixels(1)), "PublicTest"),
             ("6", pixel_string(face_pixels(2)), "PrivateTest")]


def ingest(path: Path, tmp_path: Path) -> tuple[Workspace, object]:
    workspace = Workspace(tmp_path / "ws")
    return workspace, workspace.ingest(open_source("fer2013", path))


@pytest.mark.parametrize("header", ["emotion,pixels,Usage", "emotion, Usage, pixels"])
def test_csv_rows_ids_labels_and_pixels(tmp_path: Path, header: str) -> None:
    csv_path = write_fer2013_csv(tmp_path / "fer2013.csv", GOOD_ROWS, header=header)
    workspace, report = ingest(csv_path, tmp_path)
    rows = {row["id"]: row for row in workspace.manifest().to_pylist()}
    assert sorted(rows) == ["fer2013/PrivateTest/00002", "fer2013/PublicTest/00001", "fer2013/Training/00000"]
    assert [rows[i]["label"] for i in sorted(rows)] == ["neutral", "happiness", "anger"]
    assert rows["fer2013/Training/00000"]["native_label"] == "0"
    assert rows["fer2013/Training/00000"]["origin"] == "fer2013.csv:2"
    for seed, row_id in enumerate(["fer2013/Training/00000", "fer2013/PublicTest/00001", "fer2013/PrivateTest/00002"]):
        stored = cv2.imread(str(workspace.image_path(rows[row_id]["filepath"])), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(stored, face_pixels(seed))
        assert (rows[row_id]["width"], rows[row_id]["height"], rows[row_id]["channels"]) == (48, 48, 1)
    assert report.skips == []


def test_bad_rows_are_skipped_with_line_and_reason(tmp_path: Path) -> None:
    good = pixel_string(face_pixels(5))
    rows = [
        ("0", good, "Training"),                                   # line 2: fine
        ("1", " ".join(["7"] * 2303), "Training"),                 # line 3: one pixel short
        ("2", good.replace(" ", " x", 1), "Training"),             # line 4: non-numeric
        ("9", good, "Training"),                                   # line 5: unknown emotion
        ("3", good + " 25", "Training"),                           # line 6: 2305 values
        ("4", "256 " + " ".join(["1"] * 2303), "Training"),        # line 7: value out of range
        ("5", good, "Validation"),                                 # line 8: unknown usage
    ]
    path = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    with open(path, "a") as handle:
        handle.write("6,1 2 3,Training\n")                         # line 9: wrong count again
        handle.write("6," + good + ",Training,extra\n")            # line 10: four fields
        handle.write("3," + good + ",Training")                    # line 11: no final newline, fine
    workspace, report = ingest(path, tmp_path)
    skipped = {skip.location: skip.reason for skip in report.skips}
    assert skipped == {
        "fer2013.csv:3": "wrong pixel count",
        "fer2013.csv:4": "non-numeric pixels",
        "fer2013.csv:5": "unknown emotion code",
        "fer2013.csv:6": "wrong pixel count",
        "fer2013.csv:7": "pixel value out of range",
        "fer2013.csv:8": "unknown usage",
        "fer2013.csv:9": "wrong pixel count",
        "fer2013.csv:10": "malformed row",
    }
    assert workspace.manifest()["id"].to_pylist() == ["fer2013/Training/00000", "fer2013/Training/00009"]
    stored = workspace.skips().to_pylist()
    assert len(stored) == 8 and {row["reason"] for row in stored} == set(skipped.values())


def test_block_boundaries_do_not_change_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(str(i % 7), pixel_string(face_pixels(i)), "Training") for i in range(12)]
    path = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    monkeypatch.setattr(fer2013_module, "_BLOCK_BYTES", 5000)  # smaller than one row
    workspace, report = ingest(path, tmp_path)
    assert workspace.manifest()["id"].to_pylist() == [f"fer2013/Training/{i:05d}" for i in range(12)]
    assert report.skips == []


def test_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    line = "5," + pixel_string(face_pixels(1)) + ",Training"
    path.write_bytes(f"emotion,pixels,Usage\r\n{line}\r\n\r\n{line}\r\n".encode())
    workspace, report = ingest(path, tmp_path)
    assert workspace.manifest()["id"].to_pylist() == ["fer2013/Training/00000", "fer2013/Training/00001"]
    assert workspace.manifest()["label"].to_pylist() == ["surprise", "surprise"]


@pytest.mark.parametrize("newline, prefix", [(b"\r", b""), (b"\n", b"\xef\xbb\xbf"), (b"\r", b"\xef\xbb\xbf")])
def test_cr_only_and_bom_files_read_like_plain_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     newline: bytes, prefix: bytes) -> None:
    """Issue 8 item 4: a CR-only file gave 0 rows and 0 skips, a BOM file was refused. Both now give
    the same ids, pixels and skip line numbers as a plain file, across block boundaries."""
    lines = [f"{i % 7},{pixel_string(face_pixels(i))},Training" for i in range(5)]
    lines.insert(2, "9," + pixel_string(face_pixels(9)) + ",Training")  # file line 4: unknown code
    path = tmp_path / "fer2013.csv"
    path.write_bytes(prefix + newline.join(line.encode() for line in ["emotion,pixels,Usage", *lines]) + newline)
    monkeypatch.setattr(fer2013_module, "_BLOCK_BYTES", 5000)  # smaller than one row
    workspace, report = ingest(path, tmp_path)
    assert workspace.manifest()["id"].to_pylist() == [f"fer2013/Training/{i:05d}" for i in (0, 1, 3, 4, 5)]
    assert [(skip.location, skip.reason) for skip in report.skips] == [("fer2013.csv:4", "unknown emotion code")]
    stored = workspace.manifest().to_pylist()[0]
    assert np.array_equal(cv2.imread(str(workspace.image_path(stored["filepath"])), cv2.IMREAD_UNCHANGED), face_pixels(0))


def test_headerless_file_error_quotes_a_short_prefix(tmp_path: Path) -> None:
    """Issue 8: the no-header error used to quote the whole 8 KB first row."""
    path = tmp_path / "fer2013.csv"
    path.write_text(f"3,{pixel_string(face_pixels(0))},Training\n")
    with pytest.raises(SourceError, match=r"characters\)") as raised:
        open_source("fer2013", path)
    assert len(str(raised.value)) < 400


def test_wrong_header_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SourceError, match="missing: emotion, pixels"):
        open_source("fer2013", path)
    with pytest.raises(SourceError, match="does not exist"):
        open_source("fer2013", tmp_path / "nope.csv")


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pixels)


def _folder_release(root: Path) -> Path:
    _write_jpeg(root / "train" / "angry" / "Training_10.jpg", face_pixels(10))
    _write_jpeg(root / "train" / "surprise" / "Training_10.jpg", face_pixels(11))  # same name, other class
    _write_jpeg(root / "test" / "happy" / "PublicTest_20.jpg", face_pixels(12))
    _write_jpeg(root / "test" / "sad" / "PrivateTest_30.jpg", face_pixels(13))
    _write_jpeg(root / "test" / "bored" / "PrivateTest_31.jpg", face_pixels(14))
    _write_jpeg(root / "train" / "fear" / "image_40.jpg", face_pixels(15))
    (root / "train" / "fear" / "Training_41.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


EXPECTED_FOLDER_IDS = {
    "fer2013/Training/angry/Training_10": ("anger", "Training"),
    "fer2013/Training/surprise/Training_10": ("surprise", "Training"),
    "fer2013/PublicTest/happy/PublicTest_20": ("happiness", "PublicTest"),
    "fer2013/PrivateTest/sad/PrivateTest_30": ("sadness", "PrivateTest"),
}
EXPECTED_FOLDER_SKIPS = {
    "unknown class folder": 1, "unrecognised file name": 1, "unreadable image": 1,
}


@pytest.mark.parametrize("packed", [False, True])
def test_image_folder_release(tmp_path: Path, packed: bool) -> None:
    root = _folder_release(tmp_path / "images_msambare")
    path = root
    if packed:
        path = tmp_path / "fer2013-images.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            archive.add(root, arcname="images_msambare")
    workspace, report = ingest(path, tmp_path)
    rows = {row["id"]: (row["label"], row["source_split"]) for row in workspace.manifest().to_pylist()}
    assert rows == EXPECTED_FOLDER_IDS
    assert dict(report.skip_reasons) == EXPECTED_FOLDER_SKIPS


def test_reingest_adds_nothing_and_writes_no_image(tmp_path: Path) -> None:
    root = _folder_release(tmp_path / "release")
    workspace, first = ingest(root, tmp_path)
    second = workspace.ingest(open_source("fer2013", root))
    assert (first.rows_added, first.images_written) == (4, 4)
    assert (second.rows_added, second.rows_replaced, second.images_written) == (0, 4, 0)
    assert workspace.manifest().num_rows == 4
    assert len(workspace.skips()) == 3  # replaced, not appended
    assert [entry["rows_added"] for entry in workspace.history()] == [4, 0]


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(SourceError, match="holds no image files"):
        workspace.ingest(open_source("fer2013", tmp_path / "empty"))
    assert not workspace.manifest_path.exists()


def test_real_first_300_rows(shared_data: Path, tmp_path: Path) -> None:
    workspace, report = ingest(shared_data / "fer2013" / "fer2013-first300.csv", tmp_path)
    manifest = workspace.manifest()
    assert manifest.num_rows == 300 and report.skips == []
    first = next(row for row in manifest.to_pylist() if row["id"] == "fer2013/Training/00000")
    assert (first["label"], first["native_label"]) == ("anger", "0")
    with open(shared_data / "fer2013" / "fer2013-first300.csv") as handle:
        handle.readline()
        expected = np.array(handle.readline().split(",")[1].split(), dtype=np.uint8).reshape(48, 48)
    np.testing.assert_array_equal(cv2.imread(str(workspace.image_path(first["filepath"])), cv2.IMREAD_UNCHANGED),
                                  expected)


def test_real_image_folder_release(shared_data: Path, tmp_path: Path) -> None:
    release = shared_data / "fer2013" / "fer2013-images.tar.gz"
    workspace, report = ingest(release, tmp_path)
    manifest = workspace.manifest()
    assert manifest.num_rows == 35_887 and report.skips == []
    counts = {(row["source_split"], row["native_label"]): row["rows"] for row in
              workspace.counts(by=("source_split", "native_label")).to_pylist()}
    train = [counts[("Training", name)] for name in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")]
    assert train == [3995, 436, 4097, 7215, 4965, 4830, 3171]
    assert sum(counts[("PublicTest", name)] for name in fer2013_module.FOLDER_LABELS) == 3589
    assert sum(counts[("PrivateTest", name)] for name in fer2013_module.FOLDER_LABELS) == 3589
