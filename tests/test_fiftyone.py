"""FiftyOne sync: one sample per row with its fields and tags, saved views that hold exactly the
planted samples, re-sync that updates instead of duplicating, and Brain similarity/uniqueness
from our own embeddings (offline).

FiftyOne's database is started once per test session (a started database cannot move), in the
session's temporary folder; each test uses its own uniquely named dataset and deletes it.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fercurate.audit.fiftyone_database import dataset_name as mirror_name
from fercurate.audit.fiftyone_database import prepare_fiftyone_database
from fercurate.audit.fiftyone_sync import SAVED_VIEWS, sync_to_fiftyone
from fercurate.audit.uniqueness import embedding_uniqueness
from fercurate.errors import FiftyOneError
from fercurate.schema import ROW_SCHEMA
from fercurate.sources.demo import open_demo
from fercurate.workspace import Workspace


@pytest.fixture
def dataset_name(fiftyone_database: Path) -> Iterator[str]:
    """A dataset name no other test uses; the dataset is deleted afterwards."""
    import fiftyone as fo

    name = f"fercurate-test-{uuid.uuid4().hex[:12]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def edit_manifest(workspace: Workspace, changes: dict[str, dict[str, Any]], drop: tuple[str, ...] = ()) -> None:
    """Change some rows' columns (and drop rows), as later stages (synthesis, export) will."""
    rows = [{**row, **changes.get(row["id"], {})} for row in workspace.manifest().to_pylist() if row["id"] not in drop]
    with workspace.lock():
        workspace.write_manifest(pa.Table.from_pylist(rows, schema=ROW_SCHEMA))


@dataclass
class Planted:
    """A demo workspace with one planted case of every audit finding, and where each should show."""

    workspace: Workspace
    ids: list[str]
    audit: pa.Table
    views: dict[str, list[str]]  # saved view name -> ids it holds, in the view's order
    tags: dict[str, set[str]]  # tag -> ids carrying it


def planted_workspace(folder: Path) -> Planted:
    """21 demo faces; rows 0-11 each carry one planted finding, the rest are clean."""
    workspace = Workspace(folder / "ws")
    workspace.ingest(open_demo(folder / "demo", per_class=3))
    ids = workspace.manifest()["id"].to_pylist()
    edit_manifest(workspace, {
        ids[9]: {"is_synthetic": True, "generator": "test-generator", "parent_id": ids[13]},
        ids[10]: {"flags": ["low-light"]},
        ids[11]: {"label_votes": [("happiness", 8.0), ("neutral", 2.0)], "landmarks": [[1.5, 2.5], [3.0, 4.0]]},
    })
    labels = workspace.manifest()["label"].to_pylist()
    n = len(ids)
    columns: dict[str, list[Any]] = {
        "id": ids,
        "brightness": [0.5] * n, "contrast": [0.2] * n, "blur": [120.0] * n,
        "face_detected": [i not in (7, 12) for i in range(n)],  # 12: a face the detector missed, not flagged
        "not_a_face": [i == 7 for i in range(n)],
        "is_blank": [i == 8 for i in range(n)],
        "size_anomaly": [False] * n,
        "exact_group": [2 if i in (5, 6) else -1 for i in range(n)],
        "near_group": [1 if i in (0, 1) else -1 for i in range(n)],
        "duplicate_of": [ids[0] if i == 1 else ids[5] if i == 6 else None for i in range(n)],
        "cross_split_duplicate": [i in (0, 1) for i in range(n)],
        "conflicting_duplicate_labels": [i in (5, 6) for i in range(n)],
        "label_issue": [i in (2, 3, 4) for i in range(n)],
        "label_quality": [{2: 0.30, 3: 0.05, 4: 0.15}.get(i, 0.9) for i in range(n)],
        "predicted_label": ["anger" if i in (2, 3, 4) else labels[i] for i in range(n)],
        "is_blurry": [i == 12 for i in range(n)],  # an extra audit column: added as it is
    }
    views = {
        "near duplicates across splits": [ids[0], ids[1]],
        "likely mislabelled": [ids[3], ids[4], ids[2]],  # label_quality ascending
        "conflicting duplicate labels": [ids[5], ids[6]],
        "no face detected": [ids[7]],
        "synthetic": [ids[9]],
        "synthetic with parents": [ids[13], ids[9]],  # one family: the real parent first
    }
    tags = {
        "near-duplicate-across-splits": {ids[0], ids[1]},
        "likely-mislabelled": {ids[2], ids[3], ids[4]},
        "conflicting-duplicate-labels": {ids[5], ids[6]},
        "no-face": {ids[7]},
        "blank": {ids[8]},
        "synthetic": {ids[9]},
        "low-light": {ids[10]},
    }
    return Planted(workspace, ids, pa.table(columns), views, tags)


def tagged(dataset: Any) -> dict[str, set[str]]:
    """tag -> fercurate ids carrying it."""
    found: dict[str, set[str]] = {}
    for row_id, tags in zip(*dataset.values(["fercurate_id", "tags"])):
        for tag in tags:
            found.setdefault(tag, set()).add(row_id)
    return found


def test_sync_makes_one_sample_per_row_with_fields_and_tags(tmp_path: Path, dataset_name: str) -> None:
    planted = planted_workspace(tmp_path)
    dataset = sync_to_fiftyone(planted.workspace, planted.audit, name=dataset_name)
    manifest = {row["id"]: row for row in planted.workspace.manifest().to_pylist()}

    assert dataset.persistent and len(dataset) == len(manifest)
    assert sorted(dataset.values("fercurate_id")) == sorted(manifest)
    by_id = {sample.fercurate_id: sample for sample in dataset}
    for row_id, row in manifest.items():
        sample = by_id[row_id]
        assert Path(sample.filepath) == (planted.workspace.root / row["filepath"]).resolve()
        assert Path(sample.filepath).is_file()
        assert sample.ground_truth.label == row["label"] == sample.label
        assert (sample.sha1, sample.source, sample.source_split, sample.gender) == (
            row["sha1"], row["source"], row["source_split"], row["gender"])
        assert (sample.metadata.width, sample.metadata.height, sample.metadata.num_channels) == (48, 48, 1)

    votes = by_id[planted.ids[11]]
    assert votes.label_votes == {"happiness": 8.0, "neutral": 2.0}
    assert votes.landmarks == [[1.5, 2.5], [3.0, 4.0]]
    assert by_id[planted.ids[10]].flags == ["low-light"]
    assert by_id[planted.ids[9]].is_synthetic and by_id[planted.ids[9]].generator == "test-generator"

    doubted = by_id[planted.ids[3]]
    assert doubted.label_issue and doubted.label_quality == pytest.approx(0.05)
    assert doubted.prediction.label == "anger" and doubted.prediction.confidence == pytest.approx(0.95)
    assert by_id[planted.ids[0]].near_group == 1 and by_id[planted.ids[2]].near_group is None  # -1 = none
    assert by_id[planted.ids[1]].duplicate_of == planted.ids[0]
    assert by_id[planted.ids[12]].is_blurry is True and by_id[planted.ids[13]].is_blurry is False
    assert tagged(dataset) == planted.tags


def test_bulk_written_samples_are_the_documents_fiftyone_writes(tmp_path: Path, dataset_name: str) -> None:
    """The sync writes sample documents itself (for speed); they must be what ``add_samples`` writes."""
    import fiftyone as fo
    from bson import ObjectId

    from fercurate.audit.fiftyone_sync import _LABEL_FIELDS, _label, _sample_columns

    planted = planted_workspace(tmp_path)
    n = len(planted.ids)
    embeddings = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    synced = sync_to_fiftyone(planted.workspace, planted.audit, embeddings, name=dataset_name)
    columns, types = _sample_columns(planted.workspace, planted.workspace.manifest(), planted.audit)
    reference = fo.Dataset(f"{dataset_name}-reference")
    try:
        samples = []
        for i in range(n):
            fields = {name: columns[name][i] for name in [*types, "filepath", "tags"]}
            fields.update((name, _label(fo, name, columns[name][i])) for name in _LABEL_FIELDS)
            samples.append(fo.Sample(embedding=embeddings[i], **fields))
        reference.add_samples(samples, progress=False)

        def documents(dataset: Any) -> dict[str, dict[str, Any]]:
            varying = {"_id", "_rand", "_dataset_id", "created_at", "last_modified_at", "uniqueness"}
            found = {}
            for document in dataset._sample_collection.find({}):
                for label in ("ground_truth", "prediction"):
                    if document.get(label):
                        assert isinstance(document[label].pop("_id"), ObjectId)  # each label has its own id
                # the same vector, whatever zlib level stored it
                document["embedding"] = zlib.decompress(document["embedding"])
                found[document["fercurate_id"]] = {key: value for key, value in document.items()
                                                   if key not in varying}
            return found

        ours, theirs = documents(synced), documents(reference)
        assert ours.keys() == theirs.keys() == set(planted.ids)
        for row_id in planted.ids:
            assert ours[row_id] == theirs[row_id], row_id
        assert synced.media_type == reference.media_type == "image"
        assert synced.first().ground_truth.label == columns["label"][0]  # FiftyOne reads them back
        assert all(0.999 <= document["_rand"] <= 1.0 for document in synced._sample_collection.find({}, {"_rand": 1}))
        assert len(synced.take(5, seed=0)) == 5  # random views work on the written samples
    finally:
        reference.delete()


def test_saved_views_hold_exactly_the_planted_samples(tmp_path: Path, dataset_name: str) -> None:
    planted = planted_workspace(tmp_path)
    dataset = sync_to_fiftyone(planted.workspace, planted.audit, name=dataset_name)

    assert dataset.list_saved_views() == [view.name for view in SAVED_VIEWS]
    for name, expected in planted.views.items():
        view = dataset.load_saved_view(name)
        held = ([row_id for group in view.iter_dynamic_groups() for row_id in group.values("fercurate_id")]
                if view._is_dynamic_groups else view.values("fercurate_id"))
        if name in ("likely mislabelled", "synthetic with parents"):  # worst label first; parent first
            assert held == expected, name
        else:
            assert sorted(held) == sorted(expected), name


def test_resync_adds_new_rows_updates_changed_ones_and_keeps_reviewer_tags(tmp_path: Path,
                                                                           dataset_name: str) -> None:
    planted = planted_workspace(tmp_path)
    space, ids = planted.workspace, planted.ids
    dataset = sync_to_fiftyone(space, planted.audit, name=dataset_name)
    sample_ids = dict(zip(*dataset.values(["fercurate_id", "id"])))
    dataset.select(sample_ids[ids[14]]).tag_samples("reviewed")  # a reviewer's tag, in the App

    report = space.ingest(open_demo(tmp_path / "demo-more", per_class=4))  # more rows; some ids get new faces
    assert report.rows_added > 0 and report.rows_replaced > 0
    edit_manifest(space, {ids[0]: {"split": "train"}}, drop=(ids[20],))
    manifest = {row["id"]: row for row in space.manifest().to_pylist()}
    audit = planted.audit.filter(pc.is_in(planted.audit["id"], pa.array(list(manifest))))
    quality = audit["label_quality"].to_pylist()
    quality[2] = 0.95  # the audit no longer doubts row 2
    audit = audit.set_column(audit.column_names.index("label_quality"), "label_quality", pa.array(quality))
    audit = audit.set_column(audit.column_names.index("label_issue"), "label_issue",
                             pa.array([i in (3, 4) for i in range(audit.num_rows)]))

    dataset = sync_to_fiftyone(space, audit, name=dataset_name)
    now = dict(zip(*dataset.values(["fercurate_id", "id"])))
    assert len(dataset) == len(manifest) == len(now)  # no duplicates
    assert set(now) == set(manifest)
    assert all(now[row_id] == sample_ids[row_id] for row_id in ids[:20])  # updated in place, not re-added
    for sample in dataset:
        row = manifest[sample.fercurate_id]
        assert (sample.sha1, sample.label, sample.ground_truth.label, sample.split) == (
            row["sha1"], row["label"], row["label"], row["split"])
        assert Path(sample.filepath) == (space.root / row["filepath"]).resolve()

    row2 = dataset.select(now[ids[2]]).first()
    assert row2.label_quality == pytest.approx(0.95) and row2.prediction.confidence == pytest.approx(0.05)
    assert "likely-mislabelled" not in row2.tags
    assert dataset.load_saved_view("likely mislabelled").values("fercurate_id") == [ids[3], ids[4]]
    assert tagged(dataset)["reviewed"] == {ids[14]}
    new_rows = set(manifest) - set(ids)
    assert all(dataset.select(now[row_id]).first().tags == [] for row_id in new_rows)


def test_embeddings_give_similarity_and_uniqueness(tmp_path: Path, dataset_name: str) -> None:
    import fiftyone.brain as fob

    planted = planted_workspace(tmp_path)
    n = len(planted.ids)
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.standard_normal((16, 4)))[0].T  # 4 orthonormal directions
    # three tight clusters, a lone outlier, and a near copy of one face
    embeddings = (directions[np.arange(n) % 3] + 0.05 * rng.standard_normal((n, 16))).astype(np.float32)
    query, copy, outlier = 4, 15, 17
    embeddings[copy] = embeddings[query] + 0.001 * rng.standard_normal(16).astype(np.float32)
    embeddings[outlier] = directions[3]
    audit = planted.audit.append_column("uniqueness", pa.array(embedding_uniqueness(embeddings)))

    dataset = sync_to_fiftyone(planted.workspace, audit, embeddings, name=dataset_name)
    sample_ids = dict(zip(*dataset.values(["fercurate_id", "id"])))
    assert dataset.list_brain_runs() == ["similarity"]
    nearest = dataset.sort_by_similarity(sample_ids[planted.ids[query]], k=2, brain_key="similarity")
    assert nearest.values("fercurate_id") == [planted.ids[query], planted.ids[copy]]
    index = dataset.load_brain_results("similarity")  # as the App loads it: from the embedding field
    assert index.config.embeddings_field == "embedding" and index.total_index_size == n

    uniqueness = dict(zip(*dataset.values(["fercurate_id", "uniqueness"])))
    assert all(0.0 <= value <= 1.0 for value in uniqueness.values())
    assert uniqueness[planted.ids[outlier]] == 1.0
    assert max(value for row_id, value in uniqueness.items() if row_id != planted.ids[outlier]) < 0.5
    stored = dataset.select(sample_ids[planted.ids[copy]]).first().embedding
    np.testing.assert_array_equal(stored, embeddings[copy])

    # a dataset synced before uniqueness was an audit column holds a Brain run of that name
    fob.compute_uniqueness(dataset, embeddings=np.stack(dataset.values("embedding")), uniqueness_field="uniqueness",
                           progress=False)
    dataset = sync_to_fiftyone(planted.workspace, audit, name=dataset_name)  # no embeddings now
    assert dataset.list_brain_runs() == [] and set(dataset.values("embedding")) == {None}
    assert dict(zip(*dataset.values(["fercurate_id", "uniqueness"]))) == uniqueness  # the audit's, kept


def test_prepare_is_idempotent_and_a_started_database_does_not_move(fiftyone_database: Path,
                                                                    tmp_path: Path) -> None:
    import fiftyone as fo

    fo.list_datasets()  # the database runs from now on
    before = dict(os.environ)
    prepare_fiftyone_database(fiftyone_database)
    assert dict(os.environ) == before
    assert os.environ["FIFTYONE_DATABASE_DIR"] == str(fiftyone_database.resolve())
    with pytest.raises(FiftyOneError, match="cannot move"):
        prepare_fiftyone_database(tmp_path / "elsewhere")


def test_cli_audit_syncs_findings_into_fiftyone(tmp_path: Path, fiftyone_database: Path) -> None:
    import json

    import fiftyone as fo
    from typer.testing import CliRunner

    from fercurate_cli.main import app

    space = Workspace(tmp_path / f"cli-{uuid.uuid4().hex[:8]}")
    space.ingest(open_demo(tmp_path / "demo", per_class=5))
    result = CliRunner().invoke(app, ["audit", "-w", str(space.root), "--fiftyone", "--json", "--no-faces"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    dataset = fo.load_dataset(mirror_name(space))
    try:
        assert len(dataset) == 35
        assert sorted(dataset.list_saved_views()) == sorted(view.name for view in SAVED_VIEWS)
        assert len(dataset.match_tags("likely-mislabelled")) == summary["label_noise"]["flagged"]
        assert dataset.has_brain_run("similarity")  # the audit's embeddings were aligned and used
    finally:
        dataset.delete()


def test_workspaces_of_the_same_folder_name_get_their_own_mirror(tmp_path: Path) -> None:
    first, second = Workspace(tmp_path / "a" / "ws"), Workspace(tmp_path / "b" / "ws")
    assert mirror_name(first) != mirror_name(second)
    assert mirror_name(first) == mirror_name(Workspace(tmp_path / "a" / ".." / "a" / "ws"))  # the resolved path
    assert mirror_name(first).startswith("fercurate-ws-") and len(mirror_name(first)) == len("fercurate-ws-") + 8
