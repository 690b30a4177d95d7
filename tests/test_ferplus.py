"""FER+: votes joined onto fer2013.csv rows, label modes, flags, and FER+'s label.csv layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv

from fercurate.sources import SourceError, open_source
from fercurate.sources.ferplus import ferplus_label
from fercurate.workspace import Workspace

HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
VOTES = [
    "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0",   # neutral wins 4 of 10: majority, not strict
    "Training,fer0000001.png,0,9,0,0,0,0,0,0,1,0",   # happiness, strict
    "PublicTest,fer0000002.png,0,0,0,0,0,0,0,0,2,8",  # not a face
    "PrivateTest,,3,3,0,0,0,0,0,0,4,0",             # excluded by FER+, unknown wins
]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
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


def test_ferplus_label_rules() -> None:
    assert ferplus_label(np.array([5, 5, 0, 0, 0, 0, 0, 0, 0, 0.0]), "majority") == (None, ["ferplus-no-majority"])
    assert ferplus_label(np.array([0, 0, 0, 0, 0, 0, 0, 6, 4, 0.0]), "strict-majority") == ("contempt", [])
    assert ferplus_label(np.array([5, 0, 0, 0, 0, 0, 0, 0, 5, 0.0]), "original") == (None, ["ferplus-unknown"])


def test_real_ferplus_joins_first_300_rows(shared_data: Path, tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", shared_data / "fer2013" / "fer2013-first300.csv"))
    report = space.ingest(open_source("ferplus", shared_data / "ferplus" / "fer2013new-first300.csv"))
    assert report.rows_relabelled == 300 and report.skips == []
    manifest = space.manifest().to_pylist()
    assert all(row["label_votes"] is not None for row in manifest)
    first = next(row for row in manifest if row["id"] == "fer2013/Training/00000")
    assert dict(first["label_votes"])["neutral"] == 4.0 and first["label"] == "neutral"
