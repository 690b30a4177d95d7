"""Recipes: validated before anything runs, paths relative to the recipe, steps run in order."""

from __future__ import annotations

import json
from pathlib import Path

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
    ("workspace: ws\nsteps:\n  - train: {}\n", "unknown step 'train'"),
    ("workspace: ws\nsteps:\n  - ingest: {source: affectnet, path: x}\n", "unknown source 'affectnet'"),
    ("workspace: ws\nsteps:\n  - audit: {folds: 1}\n", "step 1 \\(audit\\)"),
    ("workspace: ws\nsteps:\n  - audit: {fold: 3}\n", "Extra inputs"),
    ("workspace: [unclosed\n", "not valid YAML"),
])
def test_invalid_recipes_fail_before_running(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path / "bad.yaml", body))


def test_cli_runs_the_quickstart_recipe(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(REPO / "recipes" / "quickstart.yaml"), "-w", str(tmp_path / "ws"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [step["kind"] for step in steps] == ["ingest", "audit"]
    assert steps[0]["rows_added"] == 280 and steps[1]["rows"] == 280
    assert (tmp_path / "ws" / "audit" / "report.html").is_file()
    assert Workspace(tmp_path / "ws").manifest()["phash"].null_count == 0
