"""FER+: votes joined onto fer2013.csv rows, label modes, flags, and FER+'s label.csv layout."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv

from fercurate.sources import SourceError, open_source
from fercurate.sources.fer2013_release import USAGES, ReleaseTable, load_release, phash64
from fercurate.sources.ferplus import ferplus_label
from fercurate.workspace import Workspace

HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
VOTES = [
    "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0",   # neutral wins 4 of 10: majority, not strict
    "Training,fer0000001.png,0,9,0,0,0,0,0,0,1,0",   # happiness, strict
    "PublicTest,fer0000002.png,0,0,0,0,0,0,0,0,2,8",  # not a face
    "PrivateTest,,3,3,0,0,0,0,0,0,4,0",             # excluded by FER+, unknown wins
]


FACE_USAGES = ["Training", "Training", "PublicTest", "PrivateTest"]  # release rows 0..3 are face_pixels(0..3)


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> ReleaseTable:
    """A four-row stand-in for the shipped table of the original release: row i is face_pixels(i),
    and its image-folder file is <class>/<Usage>_<i>."""
    table = ReleaseTable(usage=np.array([USAGES.index(usage) for usage in FACE_USAGES], dtype=np.uint8),
                         key=np.array([f"angry/{usage}_{row}".encode() for row, usage in enumerate(FACE_USAGES)]),
                         phash=phash64(np.stack([face_pixels(row) for row in range(4)])),
                         has_phash=np.ones(4, dtype=bool))
    monkeypatch.setattr("fercurate.sources.ferplus.load_release", lambda: table)
    return table


def csv_workspace(tmp_path: Path, faces: list[int]) -> Workspace:
    """A workspace holding a fer2013.csv whose row r is face_pixels(faces[r]) with that face's usage."""
    rows = [("0", pixel_string(face_pixels(face)), FACE_USAGES[face]) for face in faces]
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    return space


@pytest.fixture
def workspace(tmp_path: Path, release: ReleaseTable) -> Workspace:
    rows = [("0", pixel_string(face_pixels(0)), "Training"), ("0", pixel_string(face_pixels(1)), "Training"),
            ("2", pixel_string(face_pixels(2)), "PublicTest"), ("4", pixel_string(face_pixels(3)), "PrivateTest")]
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    return space


def votes_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "fer2013new.csv"
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    return path


def labels(space: Workspace) -> dict[str, tuple[str, str, list[str]]]:
    return {row["id"]: (row["label"], row["label_source"], row["flags"]) for row in space.manifest().to_pylist()}


def test_majority_mode(workspace: Workspace, tmp_path: Path) -> None:
    report = workspace.ingest(open_source("ferplus", votes_file(tmp_path, VOTES), label_mode="majority"))
    assert report.rows_relabelled == 4 and report.rows_added == 0
    assert labels(workspace) == {
        "fer2013/Training/00000": ("neutral", "ferplus-majority", []),
        "fer2013/Training/00001": ("happiness", "ferplus-majority", []),
        "fer2013/PublicTest/00002": ("fear", "original", ["ferplus-not-face", "ferplus-no-majority"]),
        "fer2013/PrivateTest/00003": ("sadness", "original",
                                      ["ferplus-unknown", "ferplus-no-majority", "ferplus-no-image"]),
    }
    votes = dict(next(row["label_votes"] for row in workspace.manifest().to_pylist()
                      if row["id"] == "fer2013/PublicTest/00002"))
    assert votes["NF"] == 8.0 and votes["unknown"] == 2.0 and len(votes) == 10


def test_strict_majority_then_original_restores_fer2013_labels(workspace: Workspace, tmp_path: Path) -> None:
    path = votes_file(tmp_path, VOTES)
    workspace.ingest(open_source("ferplus", path, label_mode="strict-majority"))
    assert labels(workspace)["fer2013/Training/00000"] == ("anger", "original", ["ferplus-no-majority"])
    assert labels(workspace)["fer2013/Training/00001"] == ("happiness", "ferplus-strict-majority", [])
    workspace.ingest(open_source("ferplus", path, label_mode="original"))
    assert labels(workspace)["fer2013/Training/00001"] == ("anger", "original", [])


def test_label_csv_layout_and_unmatched_rows(workspace: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "FER2013Train").mkdir(parents=True)
    (data / "FER2013Valid").mkdir()
    (data / "FER2013Train" / "label.csv").write_text(
        'fer0000001.png,"(0, 0, 48, 48)",0,0,10,0,0,0,0,0,0,0\n'
        'fer0000099.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n'
        'garbage line\n')
    (data / "FER2013Valid" / "label.csv").write_text('fer0000002.png,"(0, 0, 48, 48)",0,0,0,0,0,0,7,0,0,0\n')
    report = workspace.ingest(open_source("ferplus", data))
    assert labels(workspace)["fer2013/Training/00001"] == ("surprise", "ferplus-majority", [])
    assert labels(workspace)["fer2013/PublicTest/00002"] == ("fear", "ferplus-majority", [])
    assert {(skip.location, skip.reason) for skip in report.skips} == {
        ("FER2013Train/label.csv:2", "no matching row"),
        ("FER2013Train/label.csv:3", "malformed row"),
    }


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="label mode"):
        open_source("ferplus", votes_file(tmp_path, VOTES), label_mode="plurality")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="label.csv"):
        open_source("ferplus", tmp_path / "empty")


def test_binary_file_is_a_source_error_and_bom_is_accepted(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(SourceError, match="not a text CSV"):
        list(open_source("ferplus", tmp_path / "binary.csv"))
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeff" + HEADER + "\n" + VOTES[1] + "\n", encoding="utf-8")
    assert workspace.ingest(open_source("ferplus", bom)).rows_relabelled == 1


def test_ferplus_label_rules() -> None:
    assert ferplus_label(np.array([5, 5, 0, 0, 0, 0, 0, 0, 0, 0.0]), "majority") == (None, ["ferplus-no-majority"])
    assert ferplus_label(np.array([0, 0, 0, 0, 0, 0, 0, 6, 4, 0.0]), "strict-majority") == ("contempt", [])
    assert ferplus_label(np.array([5, 0, 0, 0, 0, 0, 0, 0, 5, 0.0]), "original") == (None, ["ferplus-unknown"])


def test_invalid_votes_are_skipped(workspace: Workspace, tmp_path: Path) -> None:
    bad = ["Training,fer0000000.png,nan,0,0,0,0,0,0,0,0,0", "Training,fer0000001.png,inf,0,0,0,0,0,0,0,0,0",
           "PublicTest,fer0000002.png,-5,9,0,0,0,0,0,0,0,0"]
    report = workspace.ingest(open_source("ferplus", votes_file(tmp_path, bad)))
    assert report.rows_relabelled == 0 and report.skip_reasons == {"invalid votes": 3}
    assert {row["label_source"] for row in workspace.manifest().to_pylist()} == {"original"}


def test_swapped_rows_get_their_own_votes_by_content(release: ReleaseTable, tmp_path: Path) -> None:
    space = csv_workspace(tmp_path, [1, 0, 2, 3])  # rows 0 and 1 swapped: half of the file still verifies
    report = space.ingest(open_source("ferplus", votes_file(tmp_path, VOTES)))
    assert report.rows_relabelled == 4 and report.skips == []
    got = {row["id"]: row["label"] for row in space.manifest().to_pylist()}
    assert got["fer2013/Training/00000"] == "happiness"  # face 1, FER+ row 1: not row 0's neutral
    assert got["fer2013/Training/00001"] == "neutral"


def test_a_face_moved_onto_an_unhashed_row_gets_its_own_votes(release: ReleaseTable, tmp_path: Path) -> None:
    release.has_phash[1] = False  # like the rows FER+ gave no image: a claim on it cannot be checked
    space = csv_workspace(tmp_path, [1, 0, 2, 3])
    report = space.ingest(open_source("ferplus", votes_file(tmp_path, VOTES)))
    got = {row["id"]: row["label"] for row in space.manifest().to_pylist()}
    assert got["fer2013/Training/00001"] == "neutral"  # face 0: FER+ row 0, not the unhashed row 1 it sits on
    assert ("fer2013/Training/00000", "no release row") in {(skip.location, skip.reason) for skip in report.skips}


def test_reordered_csv_is_refused(release: ReleaseTable, tmp_path: Path) -> None:
    space = csv_workspace(tmp_path, [1, 0, 3, 2])
    with pytest.raises(SourceError, match="not the original release's row order"):
        space.ingest(open_source("ferplus", votes_file(tmp_path, VOTES)))
    assert {row["label_source"] for row in space.manifest().to_pylist()} == {"original"}


def test_subset_joins_and_foreign_faces_are_skipped(release: ReleaseTable, tmp_path: Path) -> None:
    rows = [("3", pixel_string(face_pixels(0)), "Training"), ("3", pixel_string(face_pixels(1)), "Training"),
            ("3", pixel_string(face_pixels(99)), "PublicTest")]  # a face that is no release row
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    report = space.ingest(open_source("ferplus", votes_file(tmp_path, VOTES)))
    assert report.rows_relabelled == 3  # two joined faces, and the foreign face flagged
    assert {(skip.location, skip.reason) for skip in report.skips} == {
        ("fer2013/PublicTest/00002", "no release row"),
        ("fer2013new.csv:4", "no matching row"), ("fer2013new.csv:5", "no matching row")}
    foreign = {row["id"]: row for row in space.manifest().to_pylist()}["fer2013/PublicTest/00002"]
    assert (foreign["label"], foreign["label_source"], foreign["flags"], foreign["label_votes"]) == (
        "happiness", "original", ["ferplus-no-votes"], None)  # FER2013's label, kept and flagged for export
    assert report.flag_counts["ferplus-no-votes"] == 1


def test_image_folder_release_joins_through_the_shipped_table(release: ReleaseTable, tmp_path: Path) -> None:
    root = tmp_path / "images_msambare"
    for row, usage in enumerate(FACE_USAGES):
        folder = root / ("train" if usage == "Training" else "test") / "angry"
        folder.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / f"{usage}_{row}.png"), face_pixels(row))
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", root))
    report = space.ingest(open_source("ferplus", votes_file(tmp_path, VOTES)))
    assert report.rows_relabelled == 4 and report.skips == []
    got = {row["id"]: row["label"] for row in space.manifest().to_pylist()}
    assert got["fer2013/Training/angry/Training_1"] == "happiness"
    assert got["fer2013/Training/angry/Training_0"] == "neutral"


def test_shipped_release_table() -> None:
    table = load_release()
    assert len(table) == 35_887 and table.has_phash.sum() == 35_711
    assert table.rows_of_keys()["angry/PrivateTest_10131363"] == 33914


def test_real_ferplus_joins_first_300_rows(shared_data: Path, tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", shared_data / "fer2013" / "fer2013-first300.csv"))
    report = space.ingest(open_source("ferplus", shared_data / "ferplus" / "fer2013new-first300.csv"))
    assert report.rows_relabelled == 300 and report.skips == []
    manifest = space.manifest().to_pylist()
    assert all(row["label_votes"] is not None for row in manifest)
    first = next(row for row in manifest if row["id"] == "fer2013/Training/00000")
    assert dict(first["label_votes"])["neutral"] == 4.0 and first["label"] == "neutral"


def test_real_ferplus_does_not_give_a_shuffled_csv_wrong_votes(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / "fer2013" / "fer2013-first300.csv").read_text().splitlines()
    shuffled = [lines[0], *np.random.default_rng(0).permutation(lines[1:]).tolist()]
    (tmp_path / "shuffled.csv").write_text("\n".join(shuffled) + "\n")
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", tmp_path / "shuffled.csv"))
    with pytest.raises(SourceError, match="not the original release's row order"):
        space.ingest(open_source("ferplus", shared_data / "ferplus" / "fer2013new-first300.csv"))


def test_real_ferplus_joins_image_folder_files(shared_data: Path, tmp_path: Path) -> None:
    with tarfile.open(shared_data / "fer2013" / "fer2013-images.tar.gz", mode="r|gz") as archive:
        members = (member for member in archive if member.isfile())
        for member, _ in zip(members, range(60)):
            target = tmp_path / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    with open(shared_data / "ferplus" / "image-folder-rows.csv", newline="") as handle:
        row_of = {row["path"]: int(row["row"]) for row in csv.DictReader(handle)}
    with open(shared_data / "ferplus" / "fer2013new.csv", newline="") as handle:
        votes = [float(row["happiness"]) for row in csv.DictReader(handle)]
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", tmp_path / "images_msambare"))
    report = space.ingest(open_source("ferplus", shared_data / "ferplus" / "fer2013new.csv", label_mode="original"))
    rows = space.manifest().to_pylist()
    expected = {row["id"]: votes[row_of[row["origin"]]] for row in rows if row["origin"] in row_of}
    assert report.rows_relabelled == len(expected) >= 55
    assert {row["id"]: dict(row["label_votes"])["happiness"] for row in rows if row["label_votes"]} == expected
