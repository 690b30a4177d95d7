"""Recipes: validated before anything runs, paths relative to the recipe, steps run in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from fercurate.recipes import AuditStep, IngestStep, RecipeError, load_recipe, plan_recipe, run_recipe, run_step
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
    ("workspace: ws\nsteps:\n  - align: {side: 2}\n", "step 1 \\(align\\).*side"),
    ("workspace: ws\nsteps:\n  - benchmark: {output: b, faces: warped}\n", "step 1 \\(benchmark\\).*faces"),
    ("workspace: ws\nsteps:\n  - audit: {fold: 3}\n", "Extra inputs"),
    ("workspace: ws\nsteps:\n  - generator: {generator: cgan, output: g, options: {widht: 8}}\n",
     "step 1 \\(generator\\).*widht"),
    ("workspace: ws\nsteps:\n  - generator: {generator: vae, output: g}\n", "step 1 \\(generator\\).*generator"),
    ("workspace: [unclosed\n", "not valid YAML"),
])
def test_invalid_recipes_fail_before_running(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path / "bad.yaml", body))


def test_variables_expand_with_defaults_and_every_step_kind_validates(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.recipes import STEPS, AlignStep, BenchmarkStep, ExportStep, SynthesizeStep, TrainStep

    monkeypatch.setenv("FERCURATE_TEST_DATA", str(tmp_path / "data"))
    recipe = write(tmp_path / "r.yaml", "workspace: ${FERCURATE_TEST_WS:-ws}\nsteps:\n"
                   "  - ingest: {source: jaffe, path: \"${FERCURATE_TEST_DATA}/jaffe\", align: true}\n"
                   "  - align: {side: 64}\n"
                   "  - synthesize: {target: \"min:10\", by: gender, filter: {judge: runs/x/best.pt}}\n"
                   "  - export: {output: out/export, kfold: 3}\n"
                   "  - train: {output: runs/x, model: tiny, epochs: 1, sources: [jaffe]}\n"
                   "  - benchmark: {output: out/bench, arms: [original, augmented], seeds: [0, 1], faces: both}\n")
    plan = load_recipe(recipe)
    assert plan.workspace == tmp_path / "ws" and plan.steps[0].path == tmp_path / "data" / "jaffe"
    assert plan.steps[0].align
    align, synthesize, export, train, benchmark = plan.steps[1:]
    assert isinstance(align, AlignStep) and align.align_options().side == 64
    assert isinstance(synthesize, SynthesizeStep) and synthesize.synthesize_options().by == "gender"
    assert synthesize.filter.judge == tmp_path / "runs" / "x" / "best.pt"
    assert isinstance(export, ExportStep) and export.output == tmp_path / "out" / "export"
    assert export.export_options().kfold == 3
    assert isinstance(train, TrainStep) and train.train_config().model == "tiny" and train.sources == ["jaffe"]
    assert isinstance(benchmark, BenchmarkStep) and benchmark.benchmark_config().training_seeds == [0, 1]
    assert benchmark.benchmark_config().face_variants == ["original", "aligned"]
    assert list(STEPS) == ["ingest", "align", "audit", "generator", "synthesize", "export", "train", "benchmark"]


def test_cli_runs_the_quickstart_recipe_through_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERCURATE_OUTPUT", str(tmp_path / "out"))
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    result = CliRunner().invoke(app, ["run", recipe, "-w", str(tmp_path / "ws"), "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [step["kind"] for step in steps] == ["ingest", "audit", "generator", "synthesize", "export", "train",
                                                "benchmark"]
    assert steps[0]["rows_added"] == 280 and steps[1]["rows"] == 280
    assert steps[2]["trained_steps"] == 150 and (tmp_path / "out" / "cgan" / "samples.png").is_file()
    assert steps[3]["added_total"] > 0 and steps[4]["rows"] > 0
    assert 0 <= steps[5]["test_accuracy"] <= 1
    assert {row["training set"] for row in steps[6]["accuracy"]} == {"original", "augmented", "cgan"}
    assert (tmp_path / "ws" / "audit" / "report.html").is_file()
    assert (tmp_path / "out" / "export" / "manifest.parquet").is_file()
    assert (tmp_path / "out" / "benchmark" / "benchmark.md").is_file()
    manifest = Workspace(tmp_path / "ws").manifest()
    assert manifest.filter(pc.equal(manifest["source"], "demo"))["phash"].null_count == 0  # audited before synthesis
    again = CliRunner().invoke(app, ["run", recipe, "-w", str(tmp_path / "ws"), "--json"])  # nothing changed
    assert again.exit_code == 0, again.output
    repeated = json.loads(again.stdout)["steps"]
    assert [step["action"] for step in repeated] == ["skip"] * 7
    assert repeated[3]["added_total"] == steps[3]["added_total"]  # what the step did when it ran


# --- recorded, resumable runs -----------------------------------------------------------------------

TINY = """workspace: ws
steps:
  - ingest: {source: demo, options: {per_class: 10}}
  - export: {output: out/export, formats: [manifest]}
  - train: {output: out/train, model: tiny, epochs: EPOCHS, device: cpu}
"""


def tiny_recipe(folder: Path, epochs: int = 1, export: str = "formats: [manifest]") -> Path:
    return write(folder / "tiny.yaml", TINY.replace("EPOCHS", str(epochs)).replace("formats: [manifest]", export))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def actions(result_stdout: str) -> list[str]:
    return [step["action"] for step in json.loads(result_stdout)["steps"]]


def test_dry_run_on_a_new_workspace_plans_every_step_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    result = CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert actions(result.stdout) == ["run", "run", "run"]
    table = CliRunner().invoke(app, ["run", str(recipe), "--dry-run"])
    assert table.exit_code == 0 and "not run yet" in table.stdout and "dry run" in table.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.yaml"]
    bad = CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--force", "benchmark"])
    assert bad.exit_code == 2 and "no benchmark step" in bad.output
    missing = write(tmp_path / "missing.yaml", "workspace: ws\nsteps:\n  - ingest: {source: jaffe, path: nowhere}\n")
    failed = CliRunner().invoke(app, ["run", str(missing), "--dry-run"])
    assert failed.exit_code == 2 and "nowhere does not exist" in failed.output


def test_an_ingest_redoes_when_its_source_files_change(tmp_path: Path) -> None:
    from fercurate.sources.demo import write_demo_csv

    csv = write_demo_csv(tmp_path / "data" / "fer2013.csv", per_class=3)
    recipe = load_recipe(write(tmp_path / "r.yaml", "workspace: ws\nsteps:\n"
                                                    "  - ingest: {source: fer2013, path: data/fer2013.csv}\n"))
    assert [outcome.summary["rows_added"] for outcome in run_recipe(recipe)] == [21]
    assert [(step.action, step.reason) for step in plan_recipe(recipe)] == [("skip", "unchanged")]
    write_demo_csv(csv, per_class=4)
    assert [(step.action, step.reason) for step in plan_recipe(recipe)] == [("redo", f"its source {csv} changed")]
    [outcome] = run_recipe(recipe)
    assert outcome.planned.action == "redo" and outcome.summary["rows_added"] + outcome.summary["rows_replaced"] == 28
    csv.unlink()  # a source removed after its ingest: the workspace keeps its rows, nothing to redo
    [step] = plan_recipe(recipe)
    assert step.action == "skip" and "is gone" in step.reason


def test_reruns_skip_unchanged_steps_and_redo_changed_or_forced_ones(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    first = run_recipe(load_recipe(recipe))
    assert [outcome.planned.action for outcome in first] == ["run", "run", "run"]
    record = json.loads((tmp_path / "ws" / "recipe-runs" / "tiny.json").read_text())
    assert [step["status"] for step in record["steps"]] == ["done"] * 3
    train = record["steps"][2]
    assert train["options"]["epochs"] == 1 and train["outputs"] == [str(tmp_path / "out" / "train")]
    assert train["inputs"]["workspace"] == record["steps"][0]["workspace_after"] != record["steps"][0]["inputs"]["workspace"]
    assert train["result"]["steps"] >= 1 and train["finished"]

    before = snapshot(tmp_path)  # a re-run skips every step and changes nothing, the record included
    again = CliRunner().invoke(app, ["run", str(recipe), "--json"])
    assert again.exit_code == 0, again.output
    assert actions(again.stdout) == ["skip"] * 3
    assert json.loads(again.stdout)["steps"][2]["test_accuracy"] == train["result"]["test_accuracy"]
    assert snapshot(tmp_path) == before

    tiny_recipe(tmp_path, export="formats: [manifest, fer2013-csv]")  # one option changes: it and later steps redo
    before = snapshot(tmp_path)
    plan = CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    steps = json.loads(plan.stdout)["steps"]
    assert [step["action"] for step in steps] == ["skip", "redo", "redo"]
    assert steps[1]["reason"] == "options changed: formats" and steps[2]["reason"].startswith("step 2 runs before it")
    assert steps[2]["removes"] == [str(tmp_path / "out" / "train" / name) for name in ("last.pt", "best.pt")]
    assert snapshot(tmp_path) == before  # the dry run changed nothing
    changed = CliRunner().invoke(app, ["run", str(recipe), "--json"])
    assert changed.exit_code == 0, changed.output
    assert actions(changed.stdout) == ["skip", "redo", "redo"]
    after = snapshot(tmp_path)
    assert after["ws/manifest.parquet"] == before["ws/manifest.parquet"]  # the ingest did not run
    assert (tmp_path / "out" / "export" / "fer2013.csv").is_file()  # redone into the folder it wrote before
    assert after["out/train/metrics.json"] != before["out/train/metrics.json"]

    forced = CliRunner().invoke(app, ["run", str(recipe), "--force", "3", "--json"])
    assert forced.exit_code == 0, forced.output
    assert actions(forced.stdout) == ["skip", "skip", "redo"]
    assert json.loads(forced.stdout)["steps"][2]["reason"].startswith("forced")
    assert snapshot(tmp_path)["out/export/export.json"] == after["out/export/export.json"]

    (tmp_path / "out" / "train" / "metrics.json").unlink()  # a lost output is made again
    assert [step.action for step in plan_recipe(load_recipe(recipe))] == ["skip", "skip", "redo"]
    space = Workspace(tmp_path / "ws")
    with space.lock():  # the workspace changes outside the recipe: every step reads it, every step redoes
        space.write_manifest(space.manifest().slice(1))
    plan_after = plan_recipe(load_recipe(recipe))
    assert [step.action for step in plan_after] == ["redo"] * 3
    assert plan_after[0].reason == "the workspace changed since this recipe last ran"


_KILLED_IN_TRAINING = textwrap.dedent("""
    import os, signal, sys
    from fercurate.recipes import load_recipe, run_recipe, run_step

    def execute(planned, space):
        if planned.kind != "train":
            return run_step(planned.step, space)
        def progress(event):  # last.pt is written before each validation is reported: die right after one
            if event.event == "validation":
                os.kill(os.getpid(), signal.SIGKILL)
        return run_step(planned.step, space, progress=progress)

    run_recipe(load_recipe(sys.argv[1]), execute=execute)
""")


def test_a_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import torch

    recipe = tiny_recipe(tmp_path, epochs=4)
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_TRAINING, str(recipe)], capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert killed.returncode == -9, killed.stderr
    record = json.loads((tmp_path / "ws" / "recipe-runs" / "tiny.json").read_text())
    assert [step["status"] for step in record["steps"]] == ["done", "done", "started"]
    checkpoint = torch.load(tmp_path / "out" / "train" / "last.pt", weights_only=True)
    assert checkpoint["global_step"] > 0 and not (tmp_path / "out" / "train" / "metrics.json").exists()

    plan = plan_recipe(load_recipe(recipe))
    assert [step.action for step in plan] == ["skip", "skip", "resume"]
    assert plan[2].reason.startswith("the last run stopped in it; continues from")
    assert plan[2].step.resume and not plan[2].removes

    events = []

    def execute(planned, space):  # the test's own runner, to watch the training
        return run_step(planned.step, space, progress=events.append) if planned.kind == "train" else None

    outcomes = run_recipe(load_recipe(recipe), execute=execute)
    assert [outcome.planned.action for outcome in outcomes] == ["skip", "skip", "resume"]
    assert events and events[0].step == checkpoint["global_step"] + 1  # continued after the checkpoint's step
    metrics = json.loads((tmp_path / "out" / "train" / "metrics.json").read_text())
    history = metrics["training"]["history"]
    assert history[:len(checkpoint["history"])] == checkpoint["history"]  # the killed session's epochs are kept
    assert metrics["training"]["steps"] == 4 * metrics["training"]["steps_per_epoch"]
    record = json.loads((tmp_path / "ws" / "recipe-runs" / "tiny.json").read_text())
    assert record["steps"][2]["status"] == "done" and record["steps"][2]["action"] == "resume"
    assert [step.action for step in plan_recipe(load_recipe(recipe))] == ["skip", "skip", "skip"]
