"""Synthetic rows in the audit and in FiftyOne: provenance fields, the family view that shows each
derived face beside its parent, the synthetic share per class and split (as export assigns splits),
and the view of the faces in thin demographic cells.

One demo workspace is synthesized, given an occluded test set and a demographics sidecar, audited
and synced once per module; every expectation is computed again from the manifest here.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fercurate.audit.balance import ALL_LABELS, EXCLUDED_SPLIT, THIN_CELL_COLUMNS
from fercurate.audit.fiftyone_sync import (
    PROVENANCE_FIELDS,
    SAVED_VIEWS,
    THIN_CELLS_VIEW,
    families,
    sync_audit_to_fiftyone,
    sync_to_fiftyone,
)
from fercurate.audit.result import AuditResult
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.export import ExportOptions, plan_export
from fercurate.schema import CANONICAL_LABELS
from fercurate.sources.demo import open_demo
from fercurate.synth import SynthesizeOptions, make_occluded_test_set, synthesize
from fercurate.workspace import Workspace

PROVENANCE = ("generator", "parent_id", "seed", "recipe", "synthetic_label", "near_copy_hamming",
              "judge_probability")


@dataclass
class Audited:
    workspace: Workspace
    rows: dict[str, dict[str, Any]]  # manifest rows by id, after the audit
    result: AuditResult
    dataset: Any  # the synced fiftyone.Dataset
    sidecar: dict[str, dict[str, str]]  # id -> the demographics the sidecar gave it


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, fiftyone_database: Path) -> Iterator[Audited]:
    import fiftyone as fo

    root = tmp_path_factory.mktemp("synthetic-views")
    space = Workspace(root / f"ws-{uuid.uuid4().hex[:8]}")
    space.ingest(open_demo(root / "demo", per_class=10))
    report = synthesize(space, SynthesizeOptions(target="uniform:12"))
    assert sum(report.added.values()) > 0
    assert make_occluded_test_set(space) > 0

    real = [row for row in space.manifest().to_pylist() if row["source"] != "synthetic"]
    by_split_label: dict[tuple[str, str], list[str]] = {}
    for row in sorted(real, key=lambda row: row["id"]):
        by_split_label.setdefault((row["source_split"], row["label"]), []).append(row["id"])
    sidecar = {
        **{row_id: {"gender": "female"} for row_id in by_split_label[("Training", "happiness")][:3]},
        **{row_id: {"gender": "male"} for row_id in by_split_label[("PrivateTest", "sadness")][:2]},
        by_split_label[("Training", "anger")][0]: {"gender": "male", "age_group": "20-29"},
    }
    csv = root / "demographics.csv"
    csv.write_text("id,gender,age_group\n" + "".join(
        f"{row_id},{values.get('gender', '')},{values.get('age_group', '')}\n" for row_id, values in sidecar.items()))

    result = audit_workspace(space, AuditOptions(detect_faces=False, label_noise=False, demographics=csv))
    name = f"fercurate-test-{uuid.uuid4().hex[:12]}"
    dataset = sync_audit_to_fiftyone(space, name=name)
    try:
        yield Audited(space, {row["id"]: row for row in space.manifest().to_pylist()}, result, dataset, sidecar)
    finally:
        fo.delete_dataset(name)


def derived(audited: Audited) -> dict[str, dict[str, Any]]:
    return {row_id: row for row_id, row in audited.rows.items() if row["parent_id"] is not None}


def test_every_view_is_saved(audited: Audited) -> None:
    assert audited.dataset.list_saved_views() == [*(view.name for view in SAVED_VIEWS), THIN_CELLS_VIEW.name]


def test_synthetic_samples_carry_their_provenance_and_family(audited: Audited) -> None:
    samples = {sample.fercurate_id: sample for sample in audited.dataset}
    children = derived(audited)
    assert any(row["is_synthetic"] for row in children.values())
    assert any("occluded-test" in (row["flags"] or ()) for row in children.values())
    for row_id, row in audited.rows.items():
        sample = samples[row_id]
        for field in PROVENANCE:
            assert sample[field] == row[field], (row_id, field)
        distance = row["near_copy_distance"]
        assert sample.near_copy_distance == (None if distance is None else pytest.approx(distance)), row_id
        if row_id in children:
            assert sample.family == row["parent_id"] and sample.family_rank >= 1, row_id
            assert sample.generator.startswith(("augment:occlusion-", "occluded-test:occlusion-"))
        else:
            assert (sample.family, sample.family_rank) == (row_id, 0), row_id
        assert sample.family_size == 1 + sum(child["parent_id"] == sample.family for child in children.values())
    synthetic = [row for row in audited.rows.values() if row["is_synthetic"]]
    assert all(row["near_copy_hamming"] is not None and row["seed"] is not None for row in synthetic)


def test_synthetic_view_shows_the_synthetic_faces_with_provenance_only(audited: Audited) -> None:
    view = audited.dataset.load_saved_view("synthetic")
    expected = {row_id for row_id, row in audited.rows.items() if row["is_synthetic"]}
    assert sorted(view.values("fercurate_id")) == sorted(expected)
    assert view.values("generator") == sorted(view.values("generator"))
    shown = set(view.get_field_schema())
    assert set(PROVENANCE_FIELDS) <= shown and not {"blur", "gender", "thin_cell_gender"} & shown


def test_grouped_view_puts_each_parent_first_then_its_derived_faces(audited: Audited) -> None:
    view = audited.dataset.load_saved_view("synthetic with parents")
    assert view._is_dynamic_groups
    children = derived(audited)
    expected = {parent: sorted(row_id for row_id, row in children.items() if row["parent_id"] == parent)
                for parent in {row["parent_id"] for row in children.values()}}
    groups = {}
    for group in view.iter_dynamic_groups():
        members = group.values("fercurate_id")
        groups[members[0]] = members[1:]
        assert audited.rows[members[0]]["parent_id"] is None  # the real face leads its group
    assert groups == expected
    assert len(view) == len(expected)  # one entry per family in the App's grid


def test_families_follow_parent_links_to_the_real_face() -> None:
    ids = ["real", "child-b", "child-a", "grandchild", "orphan-1", "orphan-2", "alone"]
    parents = [None, "real", "real", "child-b", "gone", "gone", None]
    assert families(ids, parents) == (
        ["real", "real", "real", "real", "gone", "gone", "alone"],
        [0, 2, 1, 3, 0, 1, 0],
        [4, 4, 4, 4, 2, 2, 1],
    )


def expected_share(audited: Audited) -> list[dict[str, Any]]:
    """Rows and synthetic rows per split x label, with splits from export's own plan."""
    exported, _, _, _ = plan_export(audited.workspace, ExportOptions())
    split = dict(zip(exported["id"], exported["split"]))
    counts: Counter[tuple[str, str, bool]] = Counter()
    for row_id, row in audited.rows.items():
        for label in (row["label"], ALL_LABELS):
            counts[split.get(row_id, EXCLUDED_SPLIT), label, row["is_synthetic"]] += 1
    splits = [name for name in ("train", "validation", "test", EXCLUDED_SPLIT)
              if any(key[0] == name for key in counts)]
    labels = [label for label in CANONICAL_LABELS if any(row["label"] == label for row in audited.rows.values())]
    records = []
    for name in splits:
        for label in [*labels, ALL_LABELS]:
            synthetic, total = counts[name, label, True], counts[name, label, True] + counts[name, label, False]
            records.append({"split": name, "label": label, "rows": total, "synthetic": synthetic,
                            "synthetic_share": round(synthetic / total, 4) if total else 0.0})
    return records


def test_synthetic_share_per_class_and_split_matches_exports_splits(audited: Audited) -> None:
    expected = expected_share(audited)
    reported = json.loads(json.dumps(audited.result.summary["balance"]["synthetic_share"]))
    assert reported == expected
    train = next(record for record in expected if record["split"] == "train" and record["label"] == ALL_LABELS)
    assert 0 < train["synthetic"] < train["rows"]
    assert all(record["synthetic"] == 0 for record in expected if record["split"] == "test")

    report = (audited.result.directory / "report.md").read_text()
    assert "## Synthetic share" in report
    assert f"{train['synthetic']}/{train['rows']} ({train['synthetic_share']:.1%})" in report


def test_cli_audit_prints_the_synthetic_share(audited: Audited) -> None:
    from fercurate_cli.main import app

    runner = CliRunner()
    arguments = ["audit", "-w", str(audited.workspace.root), "--no-faces", "--no-label-noise"]
    shown = runner.invoke(app, arguments, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    train = next(record for record in expected_share(audited)
                 if record["split"] == "train" and record["label"] == ALL_LABELS)
    assert "synthetic share" in shown.stdout
    assert f"{train['synthetic']}/{train['rows']} ({train['synthetic_share']:.1%})" in shown.stdout


def thin_cells(audited: Audited) -> dict[str, dict[str, set[str]]]:
    """Crossed column -> thin cell name -> ids, from the sidecar's values (every cell here is thin)."""
    cells: dict[str, dict[str, set[str]]] = {column: {} for column in THIN_CELL_COLUMNS}
    for row_id, values in audited.sidecar.items():
        row = audited.rows[row_id]
        for column, value in values.items():
            cells[column].setdefault(f"{row['label']} x {value} ({row['source_split']})", set()).add(row_id)
    return cells


def test_thin_cell_view_holds_exactly_the_faces_of_thin_cells(audited: Audited) -> None:
    from fiftyone import ViewField

    cells = thin_cells(audited)
    view = audited.dataset.load_saved_view(THIN_CELLS_VIEW.name)
    assert sorted(view.values("fercurate_id")) == sorted(audited.sidecar)
    for column, field in THIN_CELL_COLUMNS.items():
        named = {name for name in audited.dataset.distinct(field)}
        assert named == set(cells[column])
        for name, ids in cells[column].items():  # filtering the field on one cell gives its faces
            assert set(view.match(ViewField(field) == name).values("fercurate_id")) == ids
    assert cells["gender"]["happiness x female (Training)"] == {
        row_id for row_id, values in audited.sidecar.items() if values.get("gender") == "female"}


def test_thin_cell_view_goes_when_the_audit_is_not_given(audited: Audited, fiftyone_database: Path) -> None:
    import fiftyone as fo

    name = f"fercurate-test-{uuid.uuid4().hex[:12]}"
    try:
        dataset = sync_to_fiftyone(audited.workspace, audited.result.rows, name=name)
        assert THIN_CELLS_VIEW.name in dataset.list_saved_views()
        dataset = sync_to_fiftyone(audited.workspace, None, name=name)
        assert dataset.list_saved_views() == [view.name for view in SAVED_VIEWS]
        assert set(dataset.distinct("thin_cell_gender")) == set()
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
