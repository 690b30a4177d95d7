"""Every stage on every mix of sources: the end-to-end matrix that each new stage joins.

Each case builds a workspace from tiny generated releases (tests/releases.py, in the layouts users
download) and sends it through ingest -> audit -> FiftyOne sync -> export in every format -> reload
of each format -> a few training steps; the mix of everything also runs a tiny benchmark. Stages
used to be tested only on fixtures of their own, which is how FER+ workspaces could not be exported:
a case here is the cheapest way to keep a new source or stage honest with all the others.

To add a stage, add it to :func:`test_every_stage_on_every_mix`; to add a source, add its release
builder to :data:`RELEASES` and a case to :data:`CASES`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import releases
from fercurate.align import align_workspace
from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.export import FORMATS, ExportOptions, export_dataset
from fercurate.sources import open_source
from fercurate.sources.demo import open_demo
from fercurate.splits import SplitOptions, leakage_groups, leakage_violations
from fercurate.synth import SynthesizeOptions, make_occluded_test_set, synthesize
from fercurate.train.loop import TrainConfig
from fercurate.train.runs import BenchmarkConfig, run_benchmark, train_on_workspace
from fercurate.workspace import Workspace

RELEASES: dict[str, Callable[[Path], Path]] = {
    "fer2013-csv": releases.fer2013_csv,
    "fer2013-folder": releases.fer2013_folder_archive,
    "ckplus-original": releases.ckplus_original,
    "ckplus48": releases.ckplus48,
    "jaffe": releases.jaffe,
    "imagefolder": releases.image_folder,
    "hub-parquet": releases.hub_parquet,
}


@dataclass(frozen=True)
class Step:
    """One ``fercurate ingest``: a source name, the release it reads, and reader options."""

    source: str
    release: str
    options: dict[str, Any] = field(default_factory=dict)


FERPLUS = "ferplus-votes"  # built from the fer2013-csv release, so it needs that one first
CASES: dict[str, list[Step]] = {
    "fer2013 csv": [Step("fer2013", "fer2013-csv")],
    "fer2013 csv + FER+ original": [Step("fer2013", "fer2013-csv"), Step("ferplus", FERPLUS, {"label_mode": "original"})],
    "fer2013 csv + FER+ majority": [Step("fer2013", "fer2013-csv"), Step("ferplus", FERPLUS, {"label_mode": "majority"})],
    "fer2013 csv + FER+ strict-majority": [Step("fer2013", "fer2013-csv"),
                                           Step("ferplus", FERPLUS, {"label_mode": "strict-majority"})],
    "fer2013 image folder": [Step("fer2013", "fer2013-folder")],
    "ckplus original": [Step("ckplus", "ckplus-original")],
    "ckplus48": [Step("ckplus", "ckplus48")],
    "jaffe": [Step("jaffe", "jaffe")],
    "image folder": [Step("imagefolder", "imagefolder")],
    "hub parquet": [Step("hub", "hub-parquet")],
    "demo": [Step("demo", "demo")],
    "fer2013 csv + FER+ + synthetic and occluded-test rows": [
        Step("fer2013", "fer2013-csv"), Step("ferplus", FERPLUS, {"label_mode": "majority"}),
        Step("synthesize", "min:8"), Step("occluded-test", "")],
    "aligned fer2013 csv + ckplus original + jaffe, then synthetic and occluded-test rows": [
        Step("fer2013", "fer2013-csv"), Step("ckplus", "ckplus-original"), Step("jaffe", "jaffe"), Step("align", ""),
        Step("synthesize", "min:8"), Step("occluded-test", "")],
    "everything": [Step("fer2013", "fer2013-csv"), Step("ferplus", FERPLUS, {"label_mode": "majority"}),
                   Step("fer2013", "fer2013-folder"), Step("ckplus", "ckplus-original"), Step("jaffe", "jaffe"),
                   Step("imagefolder", "imagefolder"), Step("hub", "hub-parquet"), Step("demo", "demo")],
}
TINY = TrainConfig(model="tiny", epochs=1, batch_size=16, lr=1e-2, log_every=1, seed=0)


@pytest.fixture(scope="module")
def release_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every release, written once for the module."""
    import datasets

    datasets.disable_progress_bars()
    folder = tmp_path_factory.mktemp("releases")
    paths = {name: build(folder) for name, build in RELEASES.items()}
    paths[FERPLUS] = releases.ferplus_csv(folder, paths["fer2013-csv"])
    paths["demo"] = folder / "demo"
    return paths


@pytest.fixture(scope="module")
def release_table(release_paths: dict[str, Path]) -> Any:
    """What FER+ checks the generated fer2013.csv's faces against (the shipped table is the real release's)."""
    return releases.fer2013_release_table(release_paths["fer2013-csv"])


def build_workspace(root: Path, steps: list[Step], paths: dict[str, Path], release: Any = None) -> Workspace:
    """Ingest each step into a new workspace; every input must come in whole (no skips)."""
    workspace = Workspace(root)
    for step in steps:
        if step.source == "synthesize":  # the stage after the audit's sources: new faces with provenance
            report = synthesize(workspace, SynthesizeOptions(target=step.release, max_synthetic_share=0.9))
            assert sum(report.added.values()) > 0, report.to_dict()
            continue
        if step.source == "occluded-test":
            assert make_occluded_test_set(workspace) > 0
            continue
        if step.source == "align":  # a workspace step: later stages read the aligned faces
            report = align_workspace(workspace, workers=2)
            assert sum(report.aligned.values()) > 0, report.to_dict()
            continue
        options = {**step.options, "release": release} if step.source == "ferplus" else step.options
        reader = (open_demo(paths["demo"], per_class=10) if step.source == "demo"
                  else open_source(step.source, paths[step.release], **options))
        report = workspace.ingest(reader, workers=2)
        assert not report.skips, (step, report.skips[:3])
    return workspace


def split_options(workspace: Workspace) -> SplitOptions:
    """FER2013's own splits where the mix has them, else subject-grouped folds."""
    has_official = set(workspace.manifest()["source_split"].to_pylist()) & {"Training", "PublicTest", "train"}
    return SplitOptions(strategy="official" if has_official else "grouped", folds=(3, 1, 1))


def check_reloads(workspace: Workspace, out: Path, exported: int, with_votes: bool) -> None:
    """Every format written by the export reads back with the exported rows (and the votes)."""
    import datasets
    import fiftyone as fo

    hf = datasets.load_from_disk(str(out / "hf"))
    assert sum(len(split) for split in hf.values()) == exported
    parquet = pq.read_table(out / "manifest.parquet")
    assert parquet.num_rows == exported
    votes = [row for row in parquet["label_votes"].to_pylist() if row is not None]
    assert bool(votes) == with_votes
    if with_votes:
        hf_votes = [row["label_votes"] for split in hf.values() for row in split if row["label_votes"] is not None]
        assert len(hf_votes) == len(votes) and set(hf_votes[0]) >= {"neutral", "NF", "unknown"}
        with open(out / "manifest.csv", newline="") as handle:
            header = next(csv.reader(handle))
        assert "label_votes.neutral" in header and "label_votes.NF" in header
        assert "FER+ label mode" in (out / "README.md").read_text()
    per_split = {path.name: sum(1 for _ in path.rglob("*.png")) for path in (out / "imagefolder").iterdir()}
    assert sum(per_split.values()) == exported
    reingested = Workspace(out.parent / f"{out.name}-reingested")
    reingested.ingest(open_source("fer2013", out / "fer2013.csv"))
    assert reingested.manifest().num_rows == exported - int(np.sum(np.asarray(parquet["label"]) == "contempt"))
    reloaded = fo.Dataset.from_dir(str(out / "fiftyone"), dataset_type=fo.types.FiftyOneDataset)
    try:
        assert len(reloaded) == exported
    finally:
        reloaded.delete()


@pytest.mark.parametrize("case", list(CASES))
def test_every_stage_on_every_mix(case: str, release_paths: dict[str, Path], release_table: Any, tmp_path: Path,
                                  fiftyone_database: Path) -> None:
    import fiftyone as fo

    slug = "matrix-" + "".join(character if character.isalnum() else "-" for character in case)
    workspace = build_workspace(tmp_path / slug, CASES[case], release_paths, release_table)  # names its dataset
    rows = workspace.manifest().num_rows

    audit = audit_workspace(workspace, AuditOptions(folds=2))
    assert len(audit.rows) == rows

    dataset = sync_audit_to_fiftyone(workspace)
    try:
        assert len(dataset) == rows
        split = split_options(workspace)
        report = export_dataset(workspace, tmp_path / "out", ExportOptions(formats=list(FORMATS), split=split))
        with_votes = any(step.source == "ferplus" for step in CASES[case])
        check_reloads(workspace, tmp_path / "out", len(report.rows), with_votes)
        rows = report.rows
        assert not leakage_violations(rows, rows["split"].to_numpy(), leakage_groups(rows)).size
        assert not (rows["is_synthetic"] & (rows["split"] == "test")).any()
    finally:
        fo.delete_dataset(dataset.name)

    summary = train_on_workspace(workspace, TINY, tmp_path / "run", split, onnx=False)
    assert summary["training"]["steps"] > 0 and summary["test"]["rows"] > 0


def test_benchmark_scores_cross_dataset_tests_on_the_classes_trained(release_paths: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """A model trained on FER2013's seven classes cannot answer CK+'s contempt faces: they are
    left out of its CK+ score, counted, and the report says so."""
    steps = [Step("fer2013", "fer2013-csv"), Step("ckplus", "ckplus-original"), Step("jaffe", "jaffe")]
    workspace = build_workspace(tmp_path / "ws", steps, release_paths)
    contempt = sum(1 for label in workspace.manifest()["label"].to_pylist() if label == "contempt")
    assert contempt > 0
    config = BenchmarkConfig(train=TINY, arms=["original", "rebalanced"], rebalance_target="cap:4")
    report = run_benchmark(workspace, config, tmp_path / "bench")
    ckplus = report["arms"]["original"]["seeds"]["0"]["tests"]["ckplus (cross-dataset)"]
    assert ckplus["left_out"] == {"contempt": contempt}
    assert ckplus["rows"] == workspace.manifest().num_rows - contempt - sum(
        1 for source in workspace.manifest()["source"].to_pylist() if source != "ckplus")
    assert "contempt" not in ckplus["per_class"]
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    assert f"{contempt} contempt" in markdown and "left out" in markdown


def test_benchmark_reports_per_group_results_with_intervals_and_the_largest_gap(release_paths: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """Rows with known gender and age group get per-group scores, intervals and a gap in the report."""
    import pyarrow as pa

    workspace = build_workspace(tmp_path / "ws", [Step("fer2013", "fer2013-csv")], release_paths)
    manifest = workspace.manifest()
    count = manifest.num_rows
    for column, values in (("gender", ["female", "male"]), ("age_group", ["20-39", "40-59"])):
        for name, cells in ((column, [values[i % 2] for i in range(count)]), (f"{column}_source", ["user-sidecar"] * count)):
            index = manifest.schema.get_field_index(name)
            manifest = manifest.set_column(index, manifest.schema.field(index), pa.array(cells, pa.string()))
    with workspace.lock():
        workspace.write_manifest(manifest)
    report = run_benchmark(workspace, BenchmarkConfig(train=TINY, arms=["original"]), tmp_path / "bench")
    grouped = report["arms"]["original"]["seeds"]["0"]["tests"]["fer2013 test"]["group_report"]["gender"]
    assert set(grouped["values"]) == {"female", "male"}
    assert sum(value["n"] for value in grouped["values"].values()) == report["data"]["test_rows"]
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "gender gap (accuracy)" in markdown and "Per perceived gender and age group" in markdown


def test_benchmark_measures_alignment_with_every_arm_on_both_faces(release_paths: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """``faces="both"`` trains each arm on the faces as ingested and on the aligned faces, tests each
    on its own kind, and compares aligned with original."""
    steps = [Step("fer2013", "fer2013-csv"), Step("jaffe", "jaffe"), Step("align", "")]
    workspace = build_workspace(tmp_path / "ws", steps, release_paths)
    report = run_benchmark(workspace, BenchmarkConfig(train=TINY, arms=["original"], faces="both"), tmp_path / "bench")
    assert list(report["arms"]) == ["original (original faces)", "original (aligned faces)"]
    assert [report["arms"][key]["faces"] for key in report["arms"]] == ["original", "aligned"]
    assert report["data"]["aligned_rows"]["jaffe"]["aligned"] > 0
    compared = {(record["training set"], record["versus"], record["test set"]) for record in report["comparisons"]}
    assert ("original (aligned faces)", "original (original faces)", "jaffe (cross-dataset)") in compared
    assert (tmp_path / "bench" / "original-aligned" / "best.pt").is_file()
