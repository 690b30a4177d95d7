"""fercurate train and benchmark end to end on tiny generated data (tiny model, two epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources import open_source
from fercurate.sources.demo import open_demo
from fercurate.train.runs import manifest_hash, occlude
from fercurate.workspace import Workspace
from fercurate_cli.main import app


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("runs")
    space = Workspace(root / "ws")
    space.ingest(open_demo(root / "demo", per_class=20))
    jaffe = root / "jaffe"
    jaffe.mkdir()
    codes = {label: code for code, label in SOURCE_LABEL_MAPS["jaffe"].items()}
    for number, item in enumerate(open_demo(root / "more", per_class=2, seed=9)):  # the cross-dataset test set
        Image.fromarray(item.image).save(jaffe / f"KA.{codes[item.fields['label']]}1.{number}.tiff")
    space.ingest(open_source("jaffe", jaffe))
    return space


def test_occlusion_covers_the_asked_share_and_is_seeded() -> None:
    images = np.zeros((50, 48, 48), np.uint8)
    once, again = occlude(images, seed=1), occlude(images, seed=1)
    np.testing.assert_array_equal(once, again)
    covered = (once == 128).reshape(50, -1).mean(axis=1)
    assert np.allclose(covered, 24 * 24 / 48 / 48)
    assert not np.array_equal(once, occlude(images, seed=2))


def test_manifest_hash_follows_the_data(workspace: Workspace, tmp_path: Path) -> None:
    first = manifest_hash(workspace)
    assert first == manifest_hash(workspace) and len(first) == 40
    other = Workspace(tmp_path / "other")
    other.ingest(open_demo(tmp_path / "d", per_class=1))
    assert manifest_hash(other) != first


def test_cli_train_tests_once_and_exports_a_checked_onnx(workspace: Workspace, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "-w", str(workspace.root), "--model", "tiny",
                                      "--epochs", "2", "--sources", "demo", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["data"]["rows"] == {"train": 112, "validation": 14, "test": 14}
    assert summary["test"]["n"] == 14 and 0 <= summary["test"]["accuracy"] <= 1
    assert summary["onnx"]["argmax_agreement"] == 1.0
    assert {"best.pt", "last.pt", "metrics.json", "model.onnx", "confusion.png"} <= {
        path.name for path in (tmp_path / "run").iterdir()}
    again = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "-w", str(workspace.root), "--model", "tiny",
                                     "--epochs", "2", "--sources", "demo"])
    assert again.exit_code == 2 and "resume" in again.output


def test_cli_benchmark_compares_training_sets_on_every_test_set(workspace: Workspace, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "bench"), "-w", str(workspace.root), "--model",
                                      "tiny", "--epochs", "2", "--minutes", "2", "--train-source", "demo",
                                      "--arms", "original,rebalanced", "--rebalance", "cap:10", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["arms"]) == ["original", "rebalanced"]
    assert report["arms"]["rebalanced"]["train_rows"] == 70 and report["arms"]["original"]["train_rows"] == 112
    tests = report["arms"]["original"]["seeds"]["0"]["tests"]
    assert set(tests) == {"demo test", "demo test, occluded (square)", "jaffe (cross-dataset)"}
    assert tests["jaffe (cross-dataset)"]["rows"] == 14
    assert "synthesize -w WS --occluded-test" in report["notes"][0]  # no face-aware copy in this workspace
    one_seed = [c for c in report["comparisons"] if c["test set"] == "demo test" and c["metric"] == "accuracy"]
    assert one_seed[0]["verdict"] == "one seed: not a finding" and one_seed[0]["interval kind"].startswith("bootstrap")
    assert report["data"]["manifest_sha1"] == manifest_hash(workspace)
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "recall disgust" in markdown and "jaffe (cross-dataset)" in markdown


def test_benchmark_augmented_arm_face_aware_occlusion_and_intervals_over_seeds(tmp_path: Path) -> None:
    """After ``synthesize`` and ``synthesize --occluded-test`` the
    benchmark trains the augmented arm on exactly export's training rows, scores the face-aware
    occluded copies, and compares arms over seeds with Student's t."""
    from fercurate.export import ExportOptions
    from fercurate.synth import SynthesizeOptions, make_occluded_test_set, synthesize
    from fercurate.train.data import workspace_splits
    from fercurate.train.loop import TrainConfig
    from fercurate.train.runs import BenchmarkConfig, comparison_table, run_benchmark

    space = Workspace(tmp_path / "ws")
    space.ingest(open_demo(tmp_path / "demo", per_class=12, seed=3))
    synthesize(space, SynthesizeOptions(target="uniform:12"))
    added = make_occluded_test_set(space)
    exported = workspace_splits(space, ExportOptions(sources=["demo", "synthetic"], exclude_flags=["occluded-test"]))
    config = BenchmarkConfig(train=TrainConfig(model="tiny", steps=6, batch_size=16), arms=["original", "augmented"],
                             seeds=[0, 1], train_source="demo")
    report = run_benchmark(space, config, tmp_path / "bench")
    augmented = report["arms"]["augmented"]
    assert augmented["train_rows"] == len(exported["train"]) and augmented["synthetic_train_rows"] > 0
    assert report["arms"]["original"]["synthetic_train_rows"] == 0
    trained = {arm: {facts["training"]["steps"] for facts in report["arms"][arm]["seeds"].values()}
               for arm in ("original", "augmented")}
    assert trained == {"original": {6}, "augmented": {6}}  # the same optimisation steps on sets of different sizes
    tests = augmented["seeds"]["1"]["tests"]
    assert tests["demo test, occluded (face-aware)"]["rows"] == added == report["data"]["face_aware_occluded_rows"]
    assert tests["demo test, occluded (square)"]["rows"] == report["data"]["test_rows"]
    comparisons = comparison_table(report)
    row = comparisons[(comparisons["test set"] == "demo test") & (comparisons["metric"] == "accuracy")].iloc[0]
    per_seed = [augmented["seeds"][s]["tests"]["demo test"]["accuracy"]
                - report["arms"]["original"]["seeds"][s]["tests"]["demo test"]["accuracy"] for s in ("0", "1")]
    assert row["seeds"] == 2 and row["interval kind"] == "t over 2 seeds"
    assert abs(row["difference"] - np.mean(per_seed)) < 1e-4
    low, high = (float(v) for v in row["test-face interval"].strip("[]").split(","))
    assert low <= row["difference"] <= high  # the paired bootstrap over the pooled test faces centres on it
    assert row["verdict"] in ("finding", "within noise")
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "occluded (face-aware)" in markdown and "a finding needs several seeds" in markdown
    assert "budget 6 optimisation steps or" in markdown and "6 steps (" in markdown


def test_benchmark_refuses_bad_arms_and_seeds_before_training(workspace: Workspace, tmp_path: Path) -> None:
    from fercurate.errors import TrainError
    from fercurate.train.loop import TrainConfig
    from fercurate.train.runs import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(train=TrainConfig(model="tiny", epochs=1), arms=["original", "augmented"],
                             train_source="demo")
    with pytest.raises(TrainError, match="needs synthetic training rows") as error:
        run_benchmark(workspace, config, tmp_path / "bench")
    assert "fercurate synthesize" in error.value.fix and not (tmp_path / "bench" / "original").exists()
    for bad in (["0", "0"], ["zero"], []):
        result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "b"), "-w", str(workspace.root),
                                          "--seeds", ",".join(bad), "--train-source", "demo"])
        assert result.exit_code == 2 and "seeds" in result.output, (bad, result.output)


def test_benchmark_without_test_rows_is_refused_before_training(tmp_path: Path) -> None:
    demo = open_demo(tmp_path / "demo", per_class=6)  # a fer2013.csv reader; keep its header and Training rows
    lines = demo.path.read_text().splitlines()
    (tmp_path / "train-only.csv").write_text("\n".join([lines[0], *(line for line in lines[1:]
                                                                   if line.endswith(",Training"))]) + "\n")
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", tmp_path / "train-only.csv"))
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "bench"), "-w", str(space.root), "--model", "tiny",
                                      "--arms", "original", "--epochs", "1"])
    assert result.exit_code == 2 and "no fer2013 test rows" in result.output, result.output
    assert "internal error" not in result.output and not (tmp_path / "bench" / "original").exists()
