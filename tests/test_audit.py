"""The audit finds exactly what was planted: duplicates across splits, conflicting labels, a blank
image, flipped labels; balance and demographics are counted as recorded."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import pixel_string, write_fer2013_csv
from typer.testing import CliRunner

from fercurate.audit.balance import balance_tables
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.sources import open_source
from fercurate.sources.demo import draw_demo_faces
from fercurate.workspace import Workspace
from fercurate_cli.main import app


def textured_face(seed: int) -> np.ndarray:
    """A smooth random image: distinct per seed, with structure a perceptual hash can see."""
    noise = np.random.default_rng(seed).normal(128, 60, (48, 48)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 3 - 256, 0, 255).astype(np.uint8)


@pytest.fixture
def planted(tmp_path: Path) -> Workspace:
    usages = ["Training"] * 20 + ["PublicTest"] * 5 + ["PrivateTest"] * 5
    rows = [(str(i % 7), pixel_string(textured_face(i)), usage) for i, usage in enumerate(usages)]
    rows.append(("0", pixel_string(textured_face(0)), "PublicTest"))                          # 30: copy of 0
    shifted = np.clip(textured_face(1).astype(int) + 3, 0, 255).astype(np.uint8)
    rows.append(("5", pixel_string(shifted), "Training"))                                     # 31: near 1, label 5
    rows.append(("2", pixel_string(np.full((48, 48), 128, np.uint8)), "PrivateTest"))         # 32: blank
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    return space


def test_planted_duplicates_leakage_conflicts_and_blank(planted: Workspace) -> None:
    result = audit_workspace(planted, AuditOptions(label_noise=False))
    groups = {tuple(ids): (cross, conflict) for ids, cross, conflict in
              zip(result.groups["ids"], result.groups["cross_split"], result.groups["conflicting_labels"])}
    assert groups == {
        ("fer2013/PublicTest/00030", "fer2013/Training/00000"): (True, False),
        ("fer2013/Training/00001", "fer2013/Training/00031"): (False, True),
    }
    rows = result.rows.set_index("id")
    assert rows.index[rows["is_blank"]].tolist() == ["fer2013/PrivateTest/00032"]
    assert result.summary["duplicates"]["exact_duplicate_images"] == 1
    assert result.summary["duplicates"]["groups_across_splits"] == 1
    assert result.summary["duplicates"]["groups_with_conflicting_labels"] == 1
    manifest = {row["id"]: row for row in planted.manifest().to_pylist()}
    assert manifest["fer2013/Training/00000"]["duplicate_of"] == "fer2013/PublicTest/00030"
    assert manifest["fer2013/PublicTest/00030"]["duplicate_of"] is None
    assert all(row["phash"] is not None and row["blur"] is not None for row in manifest.values())
    for name in ("report.md", "report.html", "class_balance.png", "quality.png", "duplicates.png",
                 "rows.parquet", "duplicate_groups.parquet", "summary.json", "embeddings.npy"):
        assert (result.directory / name).is_file(), name
    assert "2 near-duplicate groups" in (result.directory / "report.md").read_text()


def test_flipped_labels_rank_as_likely_mislabelled(tmp_path: Path) -> None:
    images, codes = draw_demo_faces(per_class=30, seed=3)
    rng = np.random.default_rng(1)
    flipped = np.concatenate([rng.choice(np.flatnonzero(codes == code), 2, replace=False) for code in range(7)])
    given = codes.copy()
    given[flipped] = (codes[flipped] + 3) % 7  # two faces per class get another class's label
    rows = [(str(code), pixel_string(image), "Training") for code, image in zip(given, images)]
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    result = audit_workspace(space, AuditOptions(detect_faces=False))
    flipped_ids = {f"fer2013/Training/{i:05d}" for i in flipped}
    assert len(flipped_ids & set(result.label_issues["id"])) >= 9
    assert len(flipped_ids & set(result.label_issues["id"].head(14))) >= 9
    assert "logistic regression" in result.summary["label_noise"]["method"]


def test_balance_counts_and_unknown_demographics(planted: Workspace) -> None:
    rows = planted.manifest().to_pandas()
    balance = balance_tables(rows)
    assert balance["per_split"].loc["Training"].sum() == 21
    private = {label: count for label, count in balance["per_split"].loc["PrivateTest"].items() if count}
    assert private == {"sadness": 1, "surprise": 1, "neutral": 1, "anger": 1, "disgust": 1, "fear": 1}
    assert balance["imbalance_ratio"]["PrivateTest"] == 1.0
    assert balance["demographics"]["gender"]["unknown_share"] == 1.0


def test_sidecar_demographics_are_joined_by_id(planted: Workspace, tmp_path: Path) -> None:
    sidecar = tmp_path / "people.csv"
    sidecar.write_text("id,gender,age_group\nfer2013/Training/00000,Female,adult\nfer2013/Training/00002,,child\n"
                       "nobody,male,adult\n")
    result = audit_workspace(planted, AuditOptions(label_noise=False, detect_faces=False, demographics=sidecar))
    manifest = {row["id"]: row for row in planted.manifest().to_pylist()}
    assert (manifest["fer2013/Training/00000"]["gender"], manifest["fer2013/Training/00000"]["gender_source"]) == (
        "female", "user-sidecar")
    assert manifest["fer2013/Training/00002"]["gender"] == "unknown"
    assert manifest["fer2013/Training/00002"]["age_group"] == "child"
    assert result.summary["demographics_sidecar"] == {"matched": 2, "unmatched": 1}
    gender = result.summary["balance"]["demographics"]["gender"]
    assert gender["unknown_share"] == round(32 / 33, 4)


def test_cli_audit_json(planted: Workspace) -> None:
    result = CliRunner().invoke(app, ["audit", "-w", str(planted.root), "--no-label-noise", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["duplicates"]["groups_across_splits"] == 1 and summary["quality"]["is_blank"] == 1


def test_cli_audit_on_an_empty_workspace_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "-w", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "fercurate ingest" in result.output


def brightness_model(path: Path) -> Path:
    """A tiny ONNX 'estimator': class 0 when the face is bright, class 1 when dark (classes in a sidecar)."""
    import torch

    class Brightness(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(1, 2, 3))
            return torch.stack([(mean - 0.5) * 40, (0.5 - mean) * 40], dim=1)

    torch.onnx.export(Brightness(), (torch.zeros(2, 1, 48, 48),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    path.with_name(path.name + ".json").write_text(json.dumps({"classes": ["bright", "dark"]}))
    return path


def test_a_plugged_in_estimator_fills_only_unknown_values(tmp_path: Path) -> None:
    rows = [("0", pixel_string(np.full((48, 48), value, np.uint8)), "Training") for value in (230, 20, 128)]
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", write_fer2013_csv(tmp_path / "fer2013.csv", rows)))
    sidecar = tmp_path / "people.csv"
    sidecar.write_text("id,ethnicity\nfer2013/Training/00000,given\n")
    model = brightness_model(tmp_path / "tone.onnx")
    result = audit_workspace(space, AuditOptions(
        label_noise=False, detect_faces=False, demographics=sidecar, estimator_min_confidence=0.9,
        estimators={"ethnicity": model}))
    values = {row["id"]: (row["ethnicity"], row["ethnicity_source"]) for row in space.manifest().to_pylist()}
    assert values == {
        "fer2013/Training/00000": ("given", "user-sidecar"),                # a user's value is never replaced
        "fer2013/Training/00001": ("dark", "estimated:tone.onnx"),
        "fer2013/Training/00002": ("unknown", "unknown"),                   # 50/50: below the confidence bar
    }
    assert result.summary["demographics_estimated"] == {
        "ethnicity": {"unknown_before": 2, "estimated": 1, "left_unknown_low_confidence": 1}}
