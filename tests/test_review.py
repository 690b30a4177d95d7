"""Review decisions taken on the synced FiftyOne dataset reach the workspace, its exports and its card,
and survive re-ingest and re-sync."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fercurate.audit.fiftyone_sync import sync_to_fiftyone
from fercurate.audit.review import DROP_FLAG, pull_reviews, read_reviews
from fercurate.export import ExportOptions, export_dataset
from fercurate.sources.demo import open_demo
from fercurate.workspace import Workspace


@pytest.fixture
def reviewed(tmp_path: Path, fiftyone_database: Path):
    """A synced demo workspace on which a reviewer relabelled one face by tag, one by editing its
    label, dropped one and confirmed one."""
    import fiftyone as fo

    workspace = Workspace(tmp_path / "review-ws")
    workspace.ingest(open_demo(tmp_path / "demo", per_class=10))
    dataset = sync_to_fiftyone(workspace)
    samples = {sample["fercurate_id"]: sample for sample in dataset.match(fo.ViewField("label") == "anger")}
    tagged, edited, dropped, confirmed = sorted(samples)[:4]
    for row_id, tag in ((tagged, "review:relabel:happy"), (dropped, "review:drop"), (confirmed, "review:ok")):
        samples[row_id].tags.append(tag)
        samples[row_id].save()
    samples[edited].ground_truth.label = "fear"
    samples[edited].save()
    yield workspace, dataset, {"tagged": tagged, "edited": edited, "dropped": dropped, "confirmed": confirmed}
    dataset.delete()


def test_pull_brings_decisions_into_the_workspace_and_the_export(reviewed, tmp_path: Path) -> None:
    workspace, _, ids = reviewed
    summary = pull_reviews(workspace)
    assert summary["decisions"] == {"relabel": 2, "drop": 1, "ok": 1} and summary["changed"] == 4
    assert summary["relabels"] == {"anger -> happiness": 1, "anger -> fear": 1}
    rows = {row["id"]: row for row in workspace.manifest().to_pylist()}
    assert (rows[ids["tagged"]]["label"], rows[ids["tagged"]]["label_source"]) == ("happiness", "review")
    assert (rows[ids["edited"]]["label"], rows[ids["edited"]]["native_label"]) == ("fear", "0")
    assert DROP_FLAG in rows[ids["dropped"]]["flags"] and rows[ids["confirmed"]]["label"] == "anger"
    log = {row["id"]: row for row in read_reviews(workspace).to_pylist()}
    assert log[ids["tagged"]]["previous_label"] == "anger" and log[ids["tagged"]]["reviewed_at"]
    assert pull_reviews(workspace)["changed"] == 0  # pulling again changes nothing

    report = export_dataset(workspace, tmp_path / "out", ExportOptions(formats=["manifest"]))
    exported = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("id")
    assert ids["dropped"] not in exported.index and report.excluded["dropped in review"] == 1
    assert exported.loc[ids["edited"], "label"] == "fear"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "### Human review" in card and "anger -> fear: 1" in card


def test_decisions_survive_reingest_and_resync(reviewed, tmp_path: Path) -> None:
    workspace, dataset, ids = reviewed
    pull_reviews(workspace)
    workspace.ingest(open_demo(tmp_path / "demo", per_class=10))  # the source again: rows replaced
    report = export_dataset(workspace, tmp_path / "out", ExportOptions(formats=["manifest"]))
    exported = report.rows.set_index("id")
    assert exported.loc[ids["tagged"], "label"] == "happiness" and ids["dropped"] not in exported.index

    synced = sync_to_fiftyone(workspace)
    labels = dict(zip(*synced.values(["fercurate_id", "ground_truth.label"])))
    tags = dict(zip(*synced.values(["fercurate_id", "tags"])))
    assert labels[ids["edited"]] == "fear" and labels[ids["tagged"]] == "happiness"
    assert "review:drop" in tags[ids["dropped"]] and DROP_FLAG in tags[ids["dropped"]]


def test_an_unpulled_edit_is_not_overwritten_by_a_sync(reviewed) -> None:
    workspace, _, ids = reviewed
    synced = sync_to_fiftyone(workspace)  # no pull first
    labels = dict(zip(*synced.values(["fercurate_id", "ground_truth.label"])))
    assert labels[ids["edited"]] == "fear"
    assert {row["id"] for row in read_reviews(workspace).to_pylist()} == set(ids.values())
