"""Recipes: validated before anything runs, paths relative to the recipe, steps run in order."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from fercurate.recipes import AuditStep, IngestStep, RecipeError, load_recipe
from fercurate.workspace import Workspace
from fercurate_cli.main import app

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_recipes_are_valid() -> None:
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        plan = load_recipe(recipe)
        assert plan.steps and plan.workspace.is_absolute(), recipe.name


def test_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", "workspace: ws\nsteps:\n  - ingest: {source: jaffe, path: data/jaffe}\n"
                                        "  - audit: {detect_faces: false, folds: 3}\n")
    plan = load_recipe(recipe)
    assert plan.workspace == tmp_path / "ws"
    assert isinstance(plan.steps[0], IngestStep) and plan.steps[0].path == tmp_path / "data" / "jaffe"
    assert isinstance(plan.steps[1], AuditStep) and plan.steps[1].folds == 3 and not plan.steps[1].detect_faces


@pytest.mark.parametrize(("body", "message"), [
    ("steps:\n  - ingest: {source: demo}\n", "names no workspace"),
    ("workspace: ws\nsteps:\n  - deploy: {}\n", "unknown step 'deploy'"),
    ("workspace: ws\nsteps:\n  - train: {}\n", "step 1 \\(train\\).*output"),
    ("workspace: ws\nsteps:\n  - synthesize: {tagret: uniform}\n", "step 1 \\(synthesize\\).*tagret"),
    ("workspace: ws\nsteps:\n  - synthesize: {target: evenly}\n", "unknown --target 'evenly'"),
    ("workspace: ws\nsteps:\n  - benchmark: {output: b, arms: [original, magic]}\n", "step 1 \\(benchmark\\).*arms"),
    ("workspace: ws\nsteps:\n  - ingest: {source: jaffe, path: \"${FERCURATE_TEST_UNSET_PATH}\"}\n",
     "FERCURATE_TEST_UNSET_PATH.*not set"),
    ("workspace: ws\nsteps:\n  - ingest: {source: affectnet, path: x}\n", "unknown source 'affectnet'"),
    ("workspace: ws\nsteps:\n  - audit: {folds: 1}\n", "step 1 \\(audit\\)"),
    ("workspace: ws\nsteps:\n  - audit: {fold: 3}\n", "Extra inputs"),
    ("workspace: [unclosed\n", "not valid YAML"),
])
def test_invalid_recipes_fail_before_running(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path / "bad.yaml", body))


def test_variables_expand_with_defaults_and_every_step_kind_validates(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.recipes import STEPS, BenchmarkStep, ExportStep, SynthesizeStep, TrainStep

    monkeypatch.setenv("FERCURATE_TEST_DATA", str(tmp_path / "data"))
    recipe = write(tmp_path / "r.yaml", "workspace: ${FERCURATE_TEST_WS:-ws}\nsteps:\n"
                   "  - ingest: {source: jaffe, path: \"${FERCURATE_TEST_DATA}/jaffe\"}\n"
                   "  - synthesize: {target: \"min:10\", by: gender, filter: {judge: runs/x/best.pt}}\n"
                   "  - export: {output: out/export, kfold: 3}\n"
                   "  - train: {output: runs/x, model: tiny, epochs: 1, sources: [jaffe]}\n"
                   "  - benchmark: {output: out/bench, arms: [original, augmented], seeds: [0, 1]}\n")
    plan = load_recipe(recipe)
    assert plan.workspace == tmp_path / "ws" and plan.steps[0].path == tmp_path / "data" / "jaffe"
    synthesize, export, train, benchmark = plan.steps[1:]
    assert isinstance(synthesize, SynthesizeStep) and synthesize.synthesize_options().by == "gender"
    assert synthesize.filter.judge == tmp_path / "runs" / "x" / "best.pt"
    assert isinstance(export, ExportStep) and export.output == tmp_path / "out" / "export"
    assert export.export_options().kfold == 3
    assert isinstance(train, TrainStep) and train.train_config().model == "tiny" and train.sources == ["jaffe"]
    assert isinstance(benchmark, BenchmarkStep) and benchmark.benchmark_config().training_seeds == [0, 1]
    assert list(STEPS) == ["ingest", "audit", "synthesize", "export", "train", "benchmark"]


def test_cli_runs_the_quickstart_recipe_through_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERCURATE_OUTPUT", str(tmp_path / "out"))
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    result = CliRunner().invoke(app, ["run", recipe, "-w", str(tmp_path / "ws"), "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [step["kind"] for step in steps] == ["ingest", "audit", "synthesize", "export", "train", "benchmark"]
    assert steps[0]["rows_added"] == 280 and steps[1]["rows"] == 280
    assert steps[2]["added_total"] > 0 and steps[3]["rows"] > 0
    assert 0 <= steps[4]["test_accuracy"] <= 1
    assert {row["training set"] for row in steps[5]["accuracy"]} == {"original", "augmented"}
    assert (tmp_path / "ws" / "audit" / "report.html").is_file()
    assert (tmp_path / "out" / "export" / "manifest.parquet").is_file()
    assert (tmp_path / "out" / "benchmark" / "benchmark.md").is_file()
    manifest = Workspace(tmp_path / "ws").manifest()
    assert manifest.filter(pc.equal(manifest["source"], "demo"))["phash"].null_count == 0  # audited before synthesis
    again = CliRunner().invoke(app, ["run", recipe, "-w", str(tmp_path / "ws"), "--json"])  # re-runs are safe
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["steps"][2]["added_total"] == 0
