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
    assert set(report["arms"]["original"]["tests"]) == {"demo test", "demo test, occluded", "jaffe (cross-dataset)"}
    assert report["arms"]["original"]["tests"]["jaffe (cross-dataset)"]["rows"] == 14
    assert report["data"]["manifest_sha1"] == manifest_hash(workspace)
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "recall disgust" in markdown and "jaffe (cross-dataset)" in markdown
