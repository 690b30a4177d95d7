"""fercurate.synth: the rebalance plan, face-aware occluders, the filter, synthetic rows and the CLI."""

from __future__ import annotations

import json
from collections import Counter

import albumentations as A
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from fercurate.errors import OptionError
from fercurate.export import ExportOptions, plan_export
from fercurate.schema import ROW_SCHEMA, conform_to_schema, validate_table
from fercurate.sources.demo import open_demo
from fercurate.splits import leakage_groups, leakage_violations
from fercurate.synth import (OCCLUDERS, FaceGeometry, FilterOptions, SynthesizeOptions, contact_sheet,
                             make_occluded_test_set, plan_rebalance, remove_synthetic, synthesize)
from fercurate.synth.filter import REJECT_NEAR_COPY, score
from fercurate.synth.plan import plan_from_counts
from fercurate.workspace import Workspace
from fercurate_cli.synthesize import OCCLUDER_NAMES
from fercurate_cli.synthesize import synthesize as synthesize_command

COUNTS = {"happiness": 90, "neutral": 60, "sadness": 40, "disgust": 10}  # disgust reaches at most 20 at 50%


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("synth")
    space = Workspace(root / "ws")
    space.ingest(open_demo(root / "demo", per_class=12))
    return space


def _train(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, count in counts.items() for _ in range(count)]
    return pd.DataFrame({"id": [f"x/{i:04d}" for i in range(len(labels))], "label": labels})


@pytest.mark.parametrize("target, expected", [
    ("uniform", {"happiness": 90, "neutral": 90, "sadness": 90, "disgust": 90}),
    ("uniform:50", {"happiness": 50, "neutral": 50, "sadness": 50, "disgust": 50}),
    ("min:50", {"happiness": 90, "neutral": 60, "sadness": 50, "disgust": 50}),
    ("cap:70", {"happiness": 70, "neutral": 70, "sadness": 70, "disgust": 70}),
    ("happiness=2,disgust=1", {"happiness": 90, "neutral": 60, "sadness": 45, "disgust": 45}),
])
def test_plan_adds_up_for_each_target_kind(target: str, expected: dict[str, int]) -> None:
    counts = {"happiness": 90, "neutral": 60, "sadness": 45, "disgust": 40}
    plan = plan_from_counts(_train(counts), target=target, max_synthetic_share=0.6)
    assert {row.label: row.target for row in plan.classes} == expected
    for row in plan.classes:
        assert row.real - row.dropped + sum(row.new.values()) == row.target
        assert row.dropped == max(0, row.real - row.target)
        assert row.synthetic_share <= 0.6
    assert len(plan.drop_ids) == len(set(plan.drop_ids)) == sum(row.dropped for row in plan.classes)
    assert json.loads(json.dumps(plan.to_dict()))["total_new"] == plan.total_new


def test_plan_refuses_an_impossible_target_and_names_the_largest_reachable() -> None:
    with pytest.raises(OptionError, match=r"uniform:20") as error:
        plan_from_counts(_train(COUNTS), target="uniform", max_synthetic_share=0.5)
    assert "disgust" in str(error.value)
    with pytest.raises(OptionError, match="unknown --target"):
        plan_from_counts(_train(COUNTS), target="most:3")


def _landmarks_68(size: int) -> np.ndarray:
    """A plausible 68-point face on a ``size`` square image, off the canonical centre."""
    s = size / 100
    jaw = np.stack([np.linspace(20, 80, 17), 45 + 40 * np.sin(np.linspace(0, np.pi, 17))], axis=1)
    brows = np.stack([np.r_[np.linspace(27, 45, 5), np.linspace(55, 73, 5)], np.full(10, 33)], axis=1)
    nose = np.stack([np.r_[np.full(4, 50), np.linspace(44, 56, 5)], np.r_[np.linspace(40, 55, 4), np.full(5, 58)]], axis=1)
    eye = lambda cx: np.stack([cx + np.array([-6, -3, 3, 6, 3, -3]), 42 + np.array([0, -2, -2, 0, 2, 2])], axis=1)  # noqa: E731
    mouth = np.stack([50 + 12 * np.cos(np.linspace(0, 2 * np.pi, 20, endpoint=False)),
                      72 + 4 * np.sin(np.linspace(0, 2 * np.pi, 20, endpoint=False))], axis=1)
    return np.vstack([jaw, brows, nose, eye(36), eye(64), mouth]).astype(np.float32) * s


def _region_box(name: str, g: FaceGeometry, size: int) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) of where an occluder of ``name``'s region may paint."""
    d = g.eye_distance
    return {
        "eyes": (g.eye_y - 0.6 * d, g.eye_y + 0.6 * d, 0, size),
        "nose-mouth": (g.eye_y, size, 0, size),
        "forehead": (0, g.eye_y, 0, size),
        "chin": (g.mouth[1], size, 0, size),
        "face": (g.eye_y - 0.8 * d, size, 0, size),
    }[OCCLUDERS[name].region]


@pytest.mark.parametrize("name", sorted(OCCLUDERS))
@pytest.mark.parametrize("size, with_landmarks", [(48, False), (120, True)])
def test_each_occluder_lands_inside_its_region(name: str, size: int, with_landmarks: bool) -> None:
    points = _landmarks_68(size) if with_landmarks else None
    geometry = FaceGeometry.from_landmarks(points) if with_landmarks else FaceGeometry.canonical(size, size)
    assert_occluder_in_region(name, size, points, geometry)


def assert_occluder_in_region(name: str, size: int, points: np.ndarray | None, geometry: FaceGeometry) -> None:
    """The occluder, over five seeds, paints a real share of a blank face and (90%) only inside its region."""
    image = np.full((size, size), 128, np.uint8)
    top, bottom, left, right = _region_box(name, geometry, size)
    for seed in range(5):
        out = A.Compose([OCCLUDERS[name](angle_limit=5)], seed=seed)(image=image, face_landmarks=points)["image"]
        changed = np.argwhere(out != 128)
        assert len(changed) > 0.03 * size * size
        inside = ((changed[:, 0] >= top) & (changed[:, 0] <= bottom) & (changed[:, 1] >= left)
                  & (changed[:, 1] <= right))
        assert inside.mean() > 0.9, (name, seed, inside.mean())


def test_occluders_validate_parameters_and_the_registry_matches_the_cli() -> None:
    with pytest.raises(ValueError):
        OCCLUDERS["mask"](angle_limit=90)
    assert tuple(OCCLUDERS) == OCCLUDER_NAMES


def test_same_seed_same_pixels_in_any_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.synth import augment

    face = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    first, _ = augment.augment_faces([face] * 6, list(OCCLUDERS), [7] * 6)
    monkeypatch.setattr(augment, "_CHUNK", 4)
    again, _ = augment.augment_faces([face] * 6, list(OCCLUDERS), [7] * 6, workers=2)  # two chunks, two processes
    other, _ = augment.augment_faces([face] * 6, list(OCCLUDERS), [8] * 6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_a_planted_near_copy_is_rejected() -> None:
    rng = np.random.default_rng(1)
    real = rng.integers(0, 255, (50, 48, 48), dtype=np.uint8)
    copy = np.clip(real[7].astype(int) + 1, 0, 255).astype(np.uint8)
    fresh = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    scores = score(np.stack([copy, fresh]), real, np.array([-1, 3]), np.array(["fear", "fear"]), FilterOptions())
    assert scores.reason.tolist() == [REJECT_NEAR_COPY, None]
    assert scores.hamming[0] <= 4 and scores.pixel_distance[0] < 3 and scores.pixel_distance[1] > 50


def test_synthesize_then_export_has_no_leak_rerun_adds_nothing_remove_restores(demo_workspace: Workspace,
                                                                               tmp_path) -> None:
    space = demo_workspace
    before = space.manifest()
    done: Counter[str] = Counter()
    totals: dict[str, int] = {}

    def tell(stage: str, amount: int, total: int) -> None:
        done[stage] += amount
        totals[stage] = total

    report = synthesize(space, SynthesizeOptions(target="uniform:16"), progress=tell)
    after = space.manifest()
    added = sum(report.added.values())
    assert added == report.plan.total_new == after.num_rows - before.num_rows > 0
    assert done == totals == {f"augment {entry.label}": entry.new["augment"] for entry in report.plan.classes
                              if entry.new["augment"]}  # a stage per class, ending at its total (none replaced)
    synthetic = after.filter(after["is_synthetic"]).to_pandas()
    assert synthetic["parent_id"].notna().all() and synthetic["near_copy_distance"].notna().all()
    assert (synthetic["synthetic_label"] == synthetic["label"]).all()
    assert synthetic["id"].str.startswith("synthetic/augment/").all()
    # no synthetic row reaches a test split, and every one trains with its parent
    make_occluded_test_set(space)
    rows, _, _, _ = plan_export(space, ExportOptions())
    assert not ((rows["is_synthetic"]) & (rows["split"] == "test")).any()
    assert (rows.loc[rows["is_synthetic"], "split"] == "train").all()
    occluded = rows[rows["flags"].map(lambda f: f is not None and "occluded-test" in f)]
    assert len(occluded) and (occluded["split"] == "test").all()
    assert leakage_violations(rows, rows["split"].to_numpy(), leakage_groups(rows)).empty
    # the new plan counts real rows only: a re-run adds nothing
    again = synthesize(space, SynthesizeOptions(target="uniform:16"))
    assert sum(again.added.values()) == 0 and again.already_present == added
    assert make_occluded_test_set(space) == 0
    assert remove_synthetic(space, "occluded-test") == len(occluded)
    assert remove_synthetic(space) == added
    assert space.manifest().equals(before)


def test_old_schema_manifests_conform() -> None:
    old = ROW_SCHEMA.empty_table().drop_columns(["synthetic_label", "near_copy_hamming", "near_copy_distance",
                                                  "judge_probability"])
    conformed = conform_to_schema(old)
    assert conformed.schema == ROW_SCHEMA
    validate_table(conformed)


def test_cli_dry_run_json_and_contact_sheet(demo_workspace: Workspace, tmp_path) -> None:
    app = typer.Typer()
    app.command()(synthesize_command)
    result = CliRunner().invoke(app, ["-w", str(demo_workspace.root), "--target", "uniform:14", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plan"]["total_new"] == 7 * (14 - 10)  # 12 per class, 2 of them test
    assert plan_rebalance(demo_workspace, target="uniform:14").to_dict() == json.loads(result.output)["plan"]
    table = CliRunner().invoke(app, ["-w", str(demo_workspace.root), "--target", "uniform:14", "--dry-run"])
    assert "rebalance plan" in table.output and "synthetic share" in table.output
    bad = CliRunner().invoke(app, ["-w", str(demo_workspace.root), "--occluders", "mask,wig", "--dry-run"])
    assert isinstance(bad.exception, OptionError) and "wig" in str(bad.exception)
    faces = [np.full((48, 48), 100 + 10 * i, np.uint8) for i in range(3)]
    sheet = contact_sheet(faces, tmp_path / "sheet.png", size=48)
    import cv2
    assert cv2.imread(str(sheet), cv2.IMREAD_GRAYSCALE).shape == (48 * (1 + len(OCCLUDERS)), 48 * 3)


def test_a_subsampling_plan_flags_its_drops_export_leaves_them_out_and_remove_restores(tmp_path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_demo(tmp_path / "demo", per_class=12))
    before = space.manifest()
    report = synthesize(space, SynthesizeOptions(target="cap:8"))  # 10 training faces per class: 2 dropped each
    assert report.plan.total_new == 0 and len(report.plan.drop_ids) == 14 == report.drops_changed
    rows = space.manifest().to_pylist()
    assert sorted(row["id"] for row in rows if row["flags"]) == sorted(report.plan.drop_ids)
    assert all(row["flags"] == ["rebalance-drop"] for row in rows if row["flags"])
    rows, _, _, excluded = plan_export(space, ExportOptions())
    assert excluded == {"subsampled by the rebalance plan": 14}
    assert not rows["id"].isin(report.plan.drop_ids).any()
    assert rows[rows["split"] == "train"]["label"].value_counts().eq(8).all()
    kept, _, _, _ = plan_export(space, ExportOptions(apply_rebalance_drops=False))
    assert kept["id"].isin(report.plan.drop_ids).sum() == 14
    # the plan still counts the subsampled rows as real: the same target is stable, a new one moves the flags
    assert synthesize(space, SynthesizeOptions(target="cap:8")).drops_changed == 0
    assert synthesize(space, SynthesizeOptions(target="cap:9")).drops_changed == 7
    # a fill on top: then removing every synthetic row also takes the flags off
    filled = synthesize(space, SynthesizeOptions(target="uniform:9"))
    assert sum(filled.added.values()) == 0 and filled.drops_changed == 0  # uniform:9 drops 1 per class and adds none
    synthesize(space, SynthesizeOptions(target="uniform:12"))
    assert remove_synthetic(space) > 0
    assert space.manifest().equals(before)


def test_the_judge_records_its_probability_and_rejects_below_the_threshold(demo_workspace: Workspace,
                                                                          tmp_path) -> None:
    import cv2

    from fercurate.synth.filter import REJECT_JUDGE, judge_probabilities
    from fercurate.train.loop import TrainConfig
    from fercurate.train.runs import train_on_workspace

    train_on_workspace(demo_workspace, TrainConfig(model="tiny", epochs=1, batch_size=16), tmp_path / "run", onnx=False)
    judge = tmp_path / "run" / "best.pt"

    def run(threshold: float):
        return synthesize(demo_workspace, SynthesizeOptions(
            target="uniform:13", retries=0, filter=FilterOptions(judge=judge, min_judge_probability=threshold)))
    everything = run(0.0)
    manifest = demo_workspace.manifest().to_pandas()
    made = manifest[manifest["is_synthetic"].fillna(False).astype(bool)].sort_values("id")
    assert len(made) == everything.plan.total_new and not everything.rejected
    images = np.stack([cv2.imread(str(demo_workspace.image_path(path)), cv2.IMREAD_GRAYSCALE) for path in made["filepath"]])
    expected = judge_probabilities(judge, images, made["label"].to_numpy())
    np.testing.assert_allclose(made["judge_probability"].to_numpy(), expected, atol=1e-5)
    threshold = float(np.median(expected))
    remove_synthetic(demo_workspace)
    strict = run(threshold)  # the same seeds make the same faces: exactly those below the median go
    assert strict.rejected[REJECT_JUDGE] == int((expected < threshold).sum()) > 0
    assert sum(strict.added.values()) == int((expected >= threshold).sum())
    with pytest.raises(OptionError, match="does not exist"):
        synthesize(demo_workspace, SynthesizeOptions(target="uniform:13", filter=FilterOptions(judge=tmp_path / "no.pt")))
    remove_synthetic(demo_workspace)


def test_a_plan_by_gender_balances_label_x_gender_cells_and_faces_land_in_their_cell(tmp_path) -> None:
    train = _train({"happiness": 90, "disgust": 30}).assign(
        gender=["female"] * 60 + ["male"] * 20 + ["unknown"] * 10 + ["female"] * 25 + ["male"] * 5)
    plan = plan_from_counts(train, target="min:40", by="gender", max_synthetic_share=0.9)
    cells = {row.name: (row.real, row.target, sum(row.new.values())) for row in plan.classes}
    assert cells == {"happiness x female": (60, 60, 0), "happiness x male": (20, 40, 20),
                     "disgust x female": (25, 40, 15), "disgust x male": (5, 40, 35)}  # unknown is no cell
    capped = plan_from_counts(train, target="cap:10", by="gender")
    dropped = train.set_index("id").loc[capped.drop_ids]
    assert dropped.groupby(["label", "gender"]).size().to_dict() == {
        ("disgust", "female"): 15, ("happiness", "female"): 50, ("happiness", "male"): 10}
    with pytest.raises(OptionError, match="cannot split into cells"):
        plan_from_counts(train, target="happiness=1,disgust=1", by="gender")
    with pytest.raises(OptionError, match="no training row has a known age_group"):
        plan_from_counts(train.assign(age_group="unknown"), target="uniform", by="age_group")
    # on a workspace: every new face inherits the gender of the cell it was made for
    space = Workspace(tmp_path / "ws")
    space.ingest(open_demo(tmp_path / "demo", per_class=12))
    manifest = space.manifest()
    for column, values in (("gender", ["female" if i % 3 else "male" for i in range(manifest.num_rows)]),
                           ("gender_source", ["user-sidecar"] * manifest.num_rows)):
        index = manifest.schema.get_field_index(column)
        manifest = manifest.set_column(index, manifest.schema.field(index), pa.array(values))
    with space.lock():
        space.write_manifest(manifest)
    report = synthesize(space, SynthesizeOptions(target="uniform", by="gender", max_synthetic_share=0.8))
    made = space.manifest().to_pandas()
    made = made[made["is_synthetic"].fillna(False).astype(bool)]
    per_cell = made.groupby(["label", "gender"]).size().to_dict()
    assert per_cell == {(row.label, row.group): sum(row.new.values()) for row in report.plan.classes
                        if sum(row.new.values())}
    parents = space.manifest().to_pandas().set_index("id").loc[made["parent_id"], "gender"].to_numpy()
    assert (parents == made["gender"].to_numpy()).all()
