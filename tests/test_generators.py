"""fercurate.synth.generators: the shared trainer (budget, checkpoints, exact resume, sample grids),
loading and sampling, synthesize with generated faces, their splits, the benchmark's arms and the CLI.
The networks themselves are tested in test_generator_cgan.py and test_generator_ddpm.py."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fercurate.errors import OptionError, TrainError
from fercurate.export import ExportOptions, plan_export
from fercurate.schema import validate_table
from fercurate.sources.demo import open_demo
from fercurate.splits import SplitOptions, leakage_groups, leakage_violations
from fercurate.synth import SynthesizeOptions, remove_synthetic, synthesize
from fercurate.synth.generators import (GENERATORS, GeneratorProgress, generator_config, load_generator,
                                        train_generator)
from fercurate.train.runs import ARMS, SYNTHETIC_ARMS, Arm
from fercurate.workspace import Workspace
from fercurate_cli.generator import GENERATOR_KINDS
from fercurate_cli.main import app

#: The smallest networks of each kind, for tests.
TINY: dict[str, dict[str, Any]] = {
    "cgan": {"width": 8, "z_dim": 16},
    "ddpm": {"block_out_channels": (8, 16), "sampling_steps": 3},
}


def tiny_config(kind: str, **values: Any) -> Any:
    return generator_config(kind, **{"image_size": 16, "batch_size": 8, "steps": 6, "sample_every": 3,
                                     "device": "cpu", **TINY[kind], **values})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("generators")
    space = Workspace(root / "ws")
    space.ingest(open_demo(root / "demo", per_class=12))
    return space


@pytest.fixture(scope="module")
def cgan_run(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cgan-run")
    train_generator(workspace, run, tiny_config("cgan"))
    return run


def test_registries_agree() -> None:
    assert set(GENERATOR_KINDS) == set(GENERATORS)
    assert set(typing.get_args(Arm)) == set(ARMS)
    assert set(SYNTHETIC_ARMS) - {"augmented", "mix"} == set(GENERATORS)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_training_writes_a_usable_generator(kind: str, workspace: Workspace, tmp_path: Path) -> None:
    events: list[GeneratorProgress] = []
    summary = train_generator(workspace, tmp_path, tiny_config(kind, log_every=2), progress=events.append)
    assert summary["step"] == 6 and summary["finished"]
    assert [event.step for event in events if not event.done] == [2, 4, 6] and events[-1].done
    assert all(np.isfinite(v) for event in events[:-1] for v in event.losses.values())
    for name in ("last.pt", "generator.pt", "train.json", "samples.png", "samples/step-000003.png",
                 "samples/step-000006.png"):
        assert (tmp_path / name).is_file(), name
    generator = load_generator(tmp_path, device="cpu")
    assert generator.kind == kind and generator.checkpoint_sha1 == summary["checkpoint_sha1"]
    assert generator.class_names == summary["class_names"]
    faces = generator.sample("happiness", [1, 2, 3])
    assert faces.shape == (3, 16, 16) and faces.dtype == np.uint8
    alone = generator.sample("happiness", [2]).astype(int)  # the batch may move a ddpm pixel by a level or two
    assert np.abs(alone - faces[1:2]).max() <= 2


def test_an_interrupted_run_resumes_exactly(workspace: Workspace, tmp_path: Path) -> None:
    config = tiny_config("cgan", steps=8, sample_every=100)
    train_generator(workspace, tmp_path / "straight", config)

    def interrupt(event: GeneratorProgress) -> None:
        if event.step == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_generator(workspace, tmp_path / "resumed", config.model_copy(update={"log_every": 4}),
                        progress=interrupt)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 4
    with pytest.raises(TrainError, match="--resume"):
        train_generator(workspace, tmp_path / "resumed", config)
    with pytest.raises(TrainError, match="differs in z_dim"):
        train_generator(workspace, tmp_path / "resumed", config.model_copy(update={"z_dim": 8}), resume=True)
    summary = train_generator(workspace, tmp_path / "resumed", config, resume=True)
    assert summary["step"] == 8 and summary["session_steps"] == 4
    straight = torch.load(tmp_path / "straight" / "generator.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "generator.pt", weights_only=True)["model"]
    flat = [(key, value) for key, value in _tensors(straight)]
    assert flat and all(torch.equal(value, other) for (key, value), (_, other) in zip(flat, _tensors(resumed)))


def _tensors(state: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        return [(prefix, state)]
    if isinstance(state, dict):
        return [item for key in sorted(state) for item in _tensors(state[key], f"{prefix}.{key}")]
    return []


def test_budget_fits_the_plan_and_stops(workspace: Workspace, tmp_path: Path) -> None:
    summary = train_generator(workspace, tmp_path, tiny_config("cgan", steps=1_000_000, max_minutes=0.15,
                                                               sample_every=10_000))
    assert summary["step"] < 1_000_000  # the budget, not the step count, ended it:
    assert summary["planned_steps"] < 1_000_000 or not summary["finished"]  # a fitted plan, or a hard stop
    assert summary["session_seconds"] < 0.15 * 60 * 1.5


def test_bad_options_and_folders_are_refused(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="unknown generator"):
        generator_config("stylegan")
    with pytest.raises(OptionError, match="image_size"):
        generator_config("cgan", image_size=4)
    with pytest.raises(OptionError, match="no trained generator"):
        load_generator(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="is a file"):
        train_generator(workspace, tmp_path / "file", tiny_config("cgan"))


def test_synthesize_fills_the_plan_with_generated_faces(workspace: Workspace, cgan_run: Path) -> None:
    options = SynthesizeOptions(target="uniform:14", methods=("augment", "cgan"), generators=(cgan_run,),
                                max_synthetic_share=0.9, device="cpu")
    report = synthesize(workspace, options)
    generated = workspace.manifest().to_pandas()
    generated = generated[generated["generator"].fillna("").str.startswith("cgan:")]
    assert report.added_by_method["cgan"] == len(generated) > 0 and report.added_by_method["augment"] > 0
    assert report.generators["cgan"]["checkpoint_sha1"] == load_generator(cgan_run).checkpoint_sha1
    assert generated["parent_id"].isna().all() and generated["checkpoint_sha1"].notna().all()
    assert (generated["label"] == generated["synthetic_label"]).all() and (generated["gender"] == "unknown").all()
    assert generated["near_copy_distance"].notna().all()
    validate_table(workspace.manifest())
    rows, _, _, _ = plan_export(workspace, ExportOptions())
    placed = rows[rows["id"].isin(generated["id"])]
    assert len(placed) == len(generated) and (placed["split"] == "train").all()
    groups = leakage_groups(rows)
    assert leakage_violations(rows, rows["split"].to_numpy(), groups).empty
    again = synthesize(workspace, options)
    assert sum(again.added.values()) == 0 and again.already_present >= len(generated)
    assert remove_synthetic(workspace, "cgan") == len(generated)
    remove_synthetic(workspace)


def test_a_generator_that_saw_evaluation_faces_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    train_generator(workspace, tmp_path, tiny_config("cgan", steps=1), split=SplitOptions(strategy="grouped", seed=5))
    options = SynthesizeOptions(target="uniform", methods=("cgan",), generators=(tmp_path,), device="cpu")
    with pytest.raises(OptionError, match="does not train on"):
        synthesize(workspace, options)
    with pytest.raises(OptionError, match="needs a trained generator"):
        synthesize(workspace, SynthesizeOptions(methods=("ddpm",)))
    with pytest.raises(ValueError, match="label only"):
        SynthesizeOptions(methods=("cgan",), by="gender")


def test_cli_trains_samples_and_synthesizes(workspace: Workspace, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["generator", "train", "cgan", str(run), "-w", str(workspace.root), "--steps", "3",
                                 "--image-size", "16", "--batch-size", "8", "--device", "cpu", "--set", "width=8",
                                 "--set", "z_dim=16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == 3
    result = runner.invoke(app, ["generator", "sample", str(run), "--out", str(tmp_path / "faces"), "--per-class", "2",
                                 "--label", "disgust", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "faces" / "disgust").iterdir()) == ["0.png", "1.png"]
    result = runner.invoke(app, ["synthesize", "-w", str(workspace.root), "--method", "mix", "--generator", str(run),
                                 "--target", "uniform:13", "--max-synthetic-share", "0.9", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["added_by_method"]) == {"augment", "cgan"}
    result = runner.invoke(app, ["generator", "train", "cgan", str(run), "-w", str(workspace.root), "--set", "width"])
    assert result.exit_code != 0 and "key=value" in result.output
    remove_synthetic(workspace)


def test_quality_report_is_written_beside_the_generator_and_reaches_synthesize(workspace: Workspace, cgan_run: Path,
                                                                               tmp_path: Path) -> None:
    from fercurate.train import TrainConfig
    from fercurate.train.runs import train_on_workspace

    train_on_workspace(workspace, TrainConfig(model="tiny", epochs=1, batch_size=16, device="cpu"), tmp_path / "clf",
                       onnx=False)
    result = CliRunner().invoke(app, ["generator", "report", str(cgan_run), "-w", str(workspace.root), "--classifier",
                                      str(tmp_path / "clf" / "best.pt"), "--per-class", "6", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["count"] for row in report["classes"]] == [6] * len(report["classes"])
    assert report["ceiling"]["classes"] and report["overall"]["diversity"] > 0
    for name in ("quality.json", "quality.md", "quality-samples.png"):
        assert (cgan_run / name).is_file()
    options = SynthesizeOptions(target="uniform", methods=("cgan",), generators=(cgan_run,), device="cpu", dry_run=True)
    assert synthesize(workspace, options).generators["cgan"]["quality"] == report
