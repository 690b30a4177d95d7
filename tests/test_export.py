"""Splits never leak (subjects, duplicate groups, parent and child, synthetic rows), balanced
selection leaves the right deficit, and every export format reloads with the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import pixel_string, write_fer2013_csv
from fercurate_cli.main import app
from test_audit import textured_face
from typer.testing import CliRunner

from fercurate.export import ExportError, ExportOptions, export_dataset
from fercurate.schema import ROW_SCHEMA
from fercurate.sources import open_source
from fercurate.splits import (
    SplitOptions,
    assign_splits,
    balanced_selection,
    leakage_groups,
    leakage_violations,
    subject_folds,
)
from fercurate.workspace import Workspace


def subject_rows(subjects: int = 12, per_subject: int = 6) -> pd.DataFrame:
    """Rows of a CK+-like set: every subject shows every label."""
    labels = ["anger", "happiness", "sadness", "surprise", "fear", "disgust"]
    records = [{"id": f"ckplus/S{s:03d}_{i}", "source": "ckplus", "subject_id": f"S{s:03d}", "source_split": None,
                "sha1": f"{s:03d}{i:037d}", "label": labels[i % len(labels)], "parent_id": None,
                "is_synthetic": False} for s in range(subjects) for i in range(per_subject)]
    return pd.DataFrame(records)


def test_grouped_split_keeps_each_subject_in_one_split() -> None:
    rows = subject_rows()
    groups = leakage_groups(rows)
    assert len(np.unique(groups)) == 12
    assignment = assign_splits(rows, groups, SplitOptions(strategy="grouped", folds=(4, 1, 1)))
    assert leakage_violations(rows, assignment.split, groups).empty
    per_subject = pd.Series(assignment.split).groupby(rows["subject_id"]).nunique()
    assert (per_subject == 1).all()
    assert set(assignment.split) == {"train", "validation", "test"}
    # a subject put in two splits by hand is caught
    broken = assignment.split.copy()
    broken[0] = "test" if broken[0] != "test" else "train"
    problems = leakage_violations(rows, broken, groups)
    assert problems["problem"].tolist() == ["group spans splits"]
    assert "ckplus/S000_0" in problems["ids"][0]


def test_subject_folds_are_subject_independent() -> None:
    rows = subject_rows()
    groups = leakage_groups(rows)
    folds = subject_folds(rows, groups, k=4)
    assert sorted(set(folds)) == [0, 1, 2, 3]
    assert (pd.Series(folds).groupby(rows["subject_id"]).nunique() == 1).all()
    with pytest.raises(ValueError, match="cannot fill 20 folds"):
        subject_folds(rows, groups, k=20)


def test_official_split_excludes_training_copies_of_test_images_and_synthetic_test_children() -> None:
    rows = pd.DataFrame([
        {"id": "a-train", "source_split": "Training", "sha1": "x", "label": "anger", "parent_id": None},
        {"id": "a-test", "source_split": "PrivateTest", "sha1": "x", "label": "fear", "parent_id": None},
        {"id": "b-train", "source_split": "Training", "sha1": "y", "label": "anger", "parent_id": None},
        {"id": "b-child", "source_split": None, "sha1": "z", "label": "anger", "parent_id": "b-train"},
        {"id": "c-test", "source_split": "PrivateTest", "sha1": "w", "label": "fear", "parent_id": None},
        {"id": "c-child", "source_split": None, "sha1": "v", "label": "fear", "parent_id": "c-test"},
        {"id": "d-val", "source_split": "PublicTest", "sha1": "u", "label": "fear", "parent_id": None},
        {"id": "d-child", "source_split": None, "sha1": "t", "label": "fear", "parent_id": "d-val"},
    ]).assign(source="fer2013", subject_id=None,
              is_synthetic=lambda frame: frame["id"].str.endswith("child"))
    groups = leakage_groups(rows)
    assignment = assign_splits(rows, groups, SplitOptions(strategy="official"))
    result = dict(zip(rows["id"], zip(assignment.split, assignment.excluded_reason)))
    assert result == {
        "a-train": (None, "duplicate of a test image"),
        "a-test": ("test", None),
        "b-train": ("train", None),
        "b-child": ("train", None),                                             # follows its parent
        "c-test": ("test", None),
        "c-child": (None, "synthetic row whose group is in an evaluation split"),  # never in test
        "d-val": ("validation", None),
        "d-child": (None, "synthetic row whose group is in an evaluation split"),  # nor in validation
    }
    assert leakage_violations(rows, assignment.split, groups).empty
    unfixed = np.array(["train", "test", "train", "train", "test", "test", "validation", "validation"], dtype=object)
    assert sorted(leakage_violations(rows, unfixed, groups)["problem"]) == [
        "group spans splits", "synthetic row outside train", "synthetic row outside train"]


def test_balanced_selection_reports_the_deficit() -> None:
    labels = np.array(["happiness"] * 50 + ["disgust"] * 5 + ["fear"] * 20)
    split = np.array(["train"] * 70 + ["test"] * 5, dtype=object)
    keep, report = balanced_selection(labels, split, "uniform:20")
    assert report["happiness"] == {"wanted": 20, "available": 50, "kept": 20, "deficit": 0}
    assert report["disgust"] == {"wanted": 20, "available": 5, "kept": 5, "deficit": 15}
    assert report["fear"]["kept"] == 15 and keep[-5:].all()  # test rows are never balanced out
    keep, report = balanced_selection(labels, split, {"happiness": 2, "disgust": 1})
    assert (report["happiness"]["wanted"], report["disgust"]["wanted"]) == (10, 5)
    with pytest.raises(ValueError, match="unknown balance target"):
        balanced_selection(labels, split, "even")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    usages = ["Training"] * 28 + ["PublicTest"] * 7 + ["PrivateTest"] * 7
    rows = [(str(i % 7), pixel_string(textured_face(i)), usage) for i, usage in enumerate(usages)]
    rows.append(("3", pixel_string(textured_face(40)), "Training"))  # 42: copy of PrivateTest row 40
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    manifest = space.manifest()
    parent = next(row for row in manifest.to_pylist() if row["id"] == "fer2013/PrivateTest/00041")
    child = {**parent, "id": "synthetic/occlusion/00041", "source": "synthetic", "source_split": None,
             "is_synthetic": True, "generator": "occlusion", "parent_id": parent["id"]}
    with space.lock():
        space.write_manifest(pa.concat_tables([manifest, pa.Table.from_pylist([child], schema=ROW_SCHEMA)]))
    return space


def test_every_format_reloads_with_the_same_rows(workspace: Workspace, tmp_path: Path) -> None:
    output = tmp_path / "export"
    report = export_dataset(workspace, output, ExportOptions(formats=["imagefolder", "hf", "fer2013-csv", "manifest"]))
    assert report.excluded == {"duplicate of a test image": 1, "synthetic row whose group is in an evaluation split": 1}
    expected = dict(zip(report.rows["id"], zip(report.rows["split"], report.rows["label"])))
    assert len(expected) == 42 and "fer2013/Training/00042" not in expected

    import datasets

    reloaded = datasets.load_from_disk(str(output / "hf"))
    names = reloaded["train"].features["label"].names
    assert names[:3] == ["neutral", "happiness", "surprise"]
    from_hf = {row["id"]: (split, names[row["label"]]) for split in reloaded for row in reloaded[split]}
    assert from_hf == expected
    first = reloaded["test"][0]
    stored = cv2.imread(str(workspace.root / first["filepath"]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(np.asarray(first["image"]), stored)
    parquet = pd.concat([pd.read_parquet(path) for path in sorted((output / "parquet").glob("*.parquet"))])
    assert sorted(parquet["id"]) == sorted(expected)

    files = sorted(output.glob("imagefolder/*/*/*.png"))
    assert len(files) == 42
    assert {(path.parts[-3], path.parts[-2]) for path in files} == set(expected.values())

    again = Workspace(tmp_path / "again")
    again.ingest(open_source("fer2013", output / "fer2013.csv"))
    usage = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
    counts = pd.Series([(usage[row["source_split"]], row["label"]) for row in again.manifest().to_pylist()])
    assert counts.value_counts().to_dict() == pd.Series(list(expected.values())).value_counts().to_dict()

    manifest = pd.read_parquet(output / "manifest.parquet")
    assert dict(zip(manifest["id"], zip(manifest["split"], manifest["label"]))) == expected
    card = (output / "README.md").read_text()
    assert card.startswith("---\n") and "task_categories:" in card and "## Splits" in card
    assert "duplicate of a test image: 1" in card
    assert json.loads((output / "export.json").read_text())["rows"] == 42


def test_export_is_atomic_and_refuses_to_overwrite(workspace: Workspace, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "export"
    export_dataset(workspace, output, ExportOptions(formats=["manifest"]))
    with pytest.raises(ExportError, match="--overwrite"):
        export_dataset(workspace, output, ExportOptions(formats=["manifest"]))
    before = (output / "manifest.parquet").read_bytes()

    import fercurate.export as export_module

    def broken(*_: object) -> dict[str, object]:
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_fer2013_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(workspace, output, ExportOptions(formats=["manifest", "fer2013-csv"], overwrite=True))
    assert (output / "manifest.parquet").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export", "fer2013.csv", "ws"]


def test_cli_export_with_balance(workspace: Workspace, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "-w", str(workspace.root), "--format",
                                      "manifest", "--balance", "uniform:5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["per_split_and_label"]["train"] == {label: 4 for label in
                                                       ("anger", "disgust", "fear", "happiness", "neutral",
                                                        "sadness", "surprise")}
    assert {counts["deficit"] for counts in summary["balance"].values()} == {1}
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "x"), "-w", str(workspace.root), "--format", "zip"])
    assert bad.exit_code == 2 and "unknown format" in bad.output


def test_fiftyone_export_reloads(workspace: Workspace, tmp_path: Path, fiftyone_database: Path) -> None:
    import fiftyone as fo

    from fercurate.audit.fiftyone_database import dataset_name

    output = tmp_path / "export"
    report = export_dataset(workspace, output, ExportOptions(formats=["fiftyone"]))
    reloaded = fo.Dataset.from_dir(str(output / "fiftyone"), dataset_type=fo.types.FiftyOneDataset)
    try:
        pairs = dict(zip(reloaded.values("fercurate_id"), reloaded.values("split")))
        assert pairs == dict(zip(report.rows["id"], report.rows["split"]))
        assert len(reloaded.match_tags("test")) == int((report.rows["split"] == "test").sum())
        assert all(Path(path).is_file() and str(output) in path for path in reloaded.values("filepath"))
    finally:
        reloaded.delete()
        fo.load_dataset(dataset_name(workspace)).delete()
