"""Re-ingesting a source keeps what later steps added to its rows (FER+ votes, labels and flags, audit
columns, estimated demographics, synthetic children) unless the pixels or the source label changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv

from fercurate.sources import open_source
from fercurate.sources.fer2013_release import USAGES, ReleaseTable, phash64
from fercurate.workspace import Workspace

VOTES = ("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
         "Training,fer0000000.png,0,9,0,0,0,0,0,0,1,0\n"
         "Training,fer0000001.png,0,0,0,0,0,0,0,0,2,8\n"
         "PublicTest,fer0000002.png,8,0,0,0,0,0,0,0,2,0\n")
AUDIT = {"phash": "abcd", "blur": 12.5, "brightness": 0.4, "contrast": 0.2, "face_detected": True,
         "duplicate_of": "fer2013/Training/00001", "gender": "female", "gender_source": "estimated:test"}


def fer2013_csv(tmp_path: Path, faces: list[int], emotions: str = "000") -> Path:
    usages = ["Training", "Training", "PublicTest"]
    return write_fer2013_csv(tmp_path / "fer2013.csv", [(emotion, pixel_string(face_pixels(face)), usage)
                                                        for emotion, face, usage in zip(emotions, faces, usages)])


@pytest.fixture
def enriched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """fer2013 rows, then FER+ votes, then audit columns and demographics, plus a synthetic child."""
    table = ReleaseTable(usage=np.array([USAGES.index(u) for u in ("Training", "Training", "PublicTest")], np.uint8),
                         key=np.array([b"", b"", b""]), phash=phash64(np.stack([face_pixels(i) for i in range(3)])),
                         has_phash=np.ones(3, dtype=bool))
    monkeypatch.setattr("fercurate.sources.ferplus.load_release", lambda: table)
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", fer2013_csv(tmp_path, [0, 1, 2])))
    (tmp_path / "votes.csv").write_text(VOTES)
    space.ingest(open_source("ferplus", tmp_path / "votes.csv"))
    rows = space.manifest().to_pylist()
    for row in rows:
        row.update(AUDIT)
    child = {**rows[0], "id": "synthetic/child-0", "source": "synthetic", "is_synthetic": True,
             "parent_id": rows[0]["id"], "generator": "occlusion"}
    with space.lock():
        space.write_manifest(pa.Table.from_pylist([*rows, child], schema=space.manifest().schema))
    return space


def by_id(space: Workspace) -> dict[str, dict]:
    return {row["id"]: row for row in space.manifest().to_pylist()}


def test_reingest_keeps_votes_labels_flags_audit_and_children(enriched: Workspace, tmp_path: Path) -> None:
    before = by_id(enriched)
    report = enriched.ingest(open_source("fer2013", tmp_path / "fer2013.csv"))
    assert report.rows_replaced == 3 and report.rows_kept_enrichment == 3 and report.rows_reset == {}
    assert report.to_dict()["rows_kept_enrichment"] == 3 and report.to_dict()["rows_reset"] == {}
    after = by_id(enriched)
    changed = {(key, name) for key, row in after.items() for name, value in row.items() if before[key][name] != value}
    assert changed == set()
    assert after["fer2013/Training/00000"]["label"] == "happiness"
    assert after["fer2013/Training/00001"]["flags"] == ["ferplus-not-face", "ferplus-no-majority"]
    assert "synthetic/child-0" in after


def test_reingest_resets_rows_whose_pixels_or_label_changed(enriched: Workspace, tmp_path: Path) -> None:
    report = enriched.ingest(open_source("fer2013", fer2013_csv(tmp_path, [5, 1, 2], emotions="030")))
    assert report.rows_kept_enrichment == 1
    assert report.rows_reset == {"pixels changed": 1, "source label changed": 1}
    after = by_id(enriched)
    for row_id in ("fer2013/Training/00000", "fer2013/Training/00001"):
        row = after[row_id]
        assert row["label_source"] == "original" and row["label_votes"] is None and row["flags"] is None
        assert row["blur"] is None and row["gender"] == "unknown"
    assert after["fer2013/PublicTest/00002"]["label"] == "neutral" and after["fer2013/PublicTest/00002"]["blur"] == 12.5


def test_ferplus_rerun_keeps_flags_of_other_steps(enriched: Workspace, tmp_path: Path) -> None:
    rows = enriched.manifest().to_pylist()
    next(row for row in rows if row["id"] == "fer2013/Training/00000")["flags"] = ["review-drop"]
    with enriched.lock():
        enriched.write_manifest(pa.Table.from_pylist(rows, schema=enriched.manifest().schema))
    enriched.ingest(open_source("ferplus", tmp_path / "votes.csv", label_mode="original"))
    assert by_id(enriched)["fer2013/Training/00001"]["flags"] == ["ferplus-not-face"]
    assert by_id(enriched)["fer2013/Training/00000"]["flags"] == ["review-drop"]
