"""The generator quality report: each metric gives its known value on planted cases, and the report
built with a tiny trained classifier finds exact copies of training faces and writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercurate.sources.demo import draw_demo_faces
from fercurate.synth.quality import (
    ClassQuality,
    QualityReport,
    frechet_distance,
    nearest_real_distances,
    precision_recall,
    within_class_diversity,
)
from fercurate.train import FaceDataset, TrainConfig, build_model, train_datasets
from fercurate.train.data import Normalization
from fercurate.train.generator_quality import (
    classifier_features,
    quality_report,
    write_quality_report,
)

CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]  # FER2013 codes 0..6


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)) * rng.uniform(0.5, 3, size=16)
    scale = np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, features) <= 1e-6 * scale
    few = features[:10]  # fewer rows than dimensions: singular covariance
    assert frechet_distance(few, few) <= 1e-6 * np.trace(np.cov(few, rowvar=False))
    shifted = [frechet_distance(features, features + shift) for shift in (0.5, 1.0, 2.0)]
    assert shifted == pytest.approx([16 * 0.25, 16 * 1.0, 16 * 4.0], rel=1e-6)  # |mean gap|^2, same covariance
    assert frechet_distance(features, rng.normal(size=(300, 16))) > 1.0  # other covariance
    with pytest.raises(ValueError):
        frechet_distance(features[:1], features)


def test_precision_and_recall_are_one_on_identical_sets_and_zero_far_away() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 8))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # A collapsed generator: all fakes at the real centre are realistic (precision 1) but cover
    # almost none of the real variety (recall ~0).
    collapsed = np.zeros((50, 8)) + rng.normal(scale=1e-3, size=(50, 8))
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.05
    with pytest.raises(ValueError):
        precision_recall(real, real[:3], k=3)


def test_nearest_real_distances_find_planted_copies() -> None:
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, size=(700, 48, 48), dtype=np.uint8)
    picked = np.array([5, 699, 0, 300, 301])
    noisy = np.clip(real[10].astype(int) + 8, 0, 255).astype(np.uint8)  # brighter copy of face 10
    samples = np.concatenate([real[picked], noisy[None], rng.integers(0, 256, size=(3, 48, 48), dtype=np.uint8)])
    index, distance = nearest_real_distances(samples, real, block=4, real_block=256)  # blocks cross both sets
    assert index[:5].tolist() == picked.tolist() and (distance[:5] == 0).all()
    assert index[5] == 10 and 0 < distance[5] <= 8
    assert (distance[6:] > 50).all()  # random faces are far from every real face (~85 gray levels)


def test_within_class_diversity_is_zero_for_one_face_repeated() -> None:
    rng = np.random.default_rng(3)
    same = np.repeat(rng.integers(0, 256, size=(1, 48, 48), dtype=np.uint8), 20, axis=0)
    assert within_class_diversity(same) == 0.0
    random_faces = rng.integers(0, 256, size=(20, 48, 48), dtype=np.uint8)
    # Uniform 0..255 pixels: RMS difference 255/sqrt(6), so L2 on the 0..1 scale is 48/sqrt(6).
    assert within_class_diversity(random_faces, pairs=500) == pytest.approx(48 / np.sqrt(6), rel=0.02)
    assert within_class_diversity(random_faces, seed=1) == within_class_diversity(random_faces, seed=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny classifier trained for a few steps on drawn faces: 140 to train, 70 held apart."""
    images, codes = draw_demo_faces(per_class=30, seed=0)
    order = np.random.default_rng(0).permutation(len(images))
    train_index, held_index = order[:140], order[140:]
    folder = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(model="tiny", epochs=2, batch_size=32, lr=1e-2)
    train_datasets(config, FaceDataset(images[train_index], codes[train_index]),
                   FaceDataset(images[held_index], codes[held_index]), CLASSES, output_dir=folder)
    names = np.array(CLASSES, dtype=object)
    return {"checkpoint": folder / "best.pt", "train_faces": images[train_index],
            "train_labels": names[codes[train_index]].tolist(), "held_faces": images[held_index],
            "held_labels": names[codes[held_index]].tolist()}


def test_classifier_features_take_the_input_of_the_last_linear_layer() -> None:
    faces = np.random.default_rng(4).integers(0, 256, size=(5, 48, 48), dtype=np.uint8)
    for name, width in (("tiny", 144), ("vgg", 1024), ("mobilenet_v2", 1280)):
        model = build_model(name, 7).train()
        features, probabilities = classifier_features(model, faces, Normalization(0.5, 0.25), batch=2)
        assert features.shape == (5, width) and probabilities.shape == (5, 7)
        assert np.allclose(probabilities.sum(axis=1), 1) and model.training  # mode restored


def test_copies_of_training_faces_are_all_rejected_and_the_ceiling_is_reported(
        tiny_run: dict[str, object], tmp_path: Path) -> None:
    train_faces, train_labels = tiny_run["train_faces"], np.array(tiny_run["train_labels"])
    samples = {label: train_faces[train_labels == label][:6] for label in ("happiness", "sadness", "contempt")}
    samples["contempt"] = train_faces[:4]  # a label the classifier never saw
    report = quality_report(samples, train_faces=train_faces, train_labels=tiny_run["train_labels"],
                            held_out_faces=tiny_run["held_faces"], held_out_labels=tiny_run["held_labels"],
                            classifier=tiny_run["checkpoint"], generator="copier")
    assert [entry.label for entry in report.classes] == ["happiness", "sadness", "contempt"]
    for entry in [*report.classes, report.overall]:
        assert entry.near_copies == entry.count and entry.near_copy_share == 1.0
        assert entry.nearest_real_median == 0.0 and entry.nearest_real_p5 == 0.0
        assert entry.diversity is not None and entry.diversity > 0
    happiness, _, contempt = report.classes
    assert 0 <= happiness.classification_accuracy <= 1 and happiness.frechet_distance >= 0
    assert 0 <= happiness.precision <= 1 and 0 <= happiness.recall <= 1
    assert happiness.precision == 1.0  # training faces lie on the manifold of the training faces
    assert contempt.classification_accuracy is None and contempt.frechet_distance is None  # no real contempt
    assert report.overall.count == 16 and report.notes["labels_unknown_to_classifier"] == ["contempt"]
    assert report.notes["real_faces_described"] == {
        label: int((train_labels == label).sum()) for label in samples}  # under the cap: every face

    ceiling = report.ceiling
    assert ceiling is not None and [entry.label for entry in ceiling.classes] == list(samples)
    held = ceiling.classes[0]
    assert held.count == tiny_run["held_labels"].count("happiness") and held.near_copies == 0
    assert held.nearest_real_median > 0 and held.frechet_distance is not None and held.diversity > 0
    assert ceiling.classes[2].count == 0 and ceiling.classes[2].diversity is None

    json_path = write_quality_report(report, tmp_path / "run", samples)
    written = json.loads(json_path.read_text())
    assert written["generator"] == "copier" and written["ceiling"]["classes"][0]["count"] == held.count
    markdown = (tmp_path / "run" / "quality.md").read_text()
    assert "| happiness | 6 |" in markdown and "Ceiling" in markdown
    sheet = cv2.imread(str(tmp_path / "run" / "quality-samples.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet.shape == (3 * 96, 110 + 8 * 96)
    assert np.array_equal(sheet[96:192:2, 110:206:2], samples["sadness"][0])  # row 2, first face, at 2x


def test_a_report_without_faces_is_valid_json_and_markdown() -> None:
    report = QualityReport("empty", [ClassQuality("fear", 0)], ClassQuality("all", 0))
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["classes"][0]["diversity"] is None
    assert "| fear | 0 | - |" in report.to_markdown()


def test_the_feature_cap_describes_a_seeded_subset_and_memorisation_still_searches_every_face(
        tiny_run: dict[str, object]) -> None:
    train_faces, train_labels = tiny_run["train_faces"], np.array(tiny_run["train_labels"])
    happiness = train_faces[train_labels == "happiness"]
    samples = {"happiness": happiness[-4:]}  # copies of faces the seeded draw of 3 may leave out

    def report(cap: int | None) -> QualityReport:
        return quality_report(samples, train_faces=train_faces, train_labels=train_labels.tolist(),
                              held_out_faces=tiny_run["held_faces"], held_out_labels=tiny_run["held_labels"],
                              classifier=tiny_run["checkpoint"], generator="copier", real_per_class=cap)

    capped, again, uncapped = report(3), report(3), report(None)
    assert len(happiness) > 3 and capped.notes["real_faces_described"] == {"happiness": 3}
    assert uncapped.notes["real_faces_described"] == {"happiness": len(happiness)}
    assert capped.classes[0].frechet_distance == again.classes[0].frechet_distance  # the same draw each run
    assert capped.classes[0].frechet_distance != uncapped.classes[0].frechet_distance
    assert capped.classes[0].near_copies == 4 and capped.classes[0].nearest_real_median == 0.0
    assert "happiness 3" in capped.to_markdown()
    with pytest.raises(ValueError, match="real_per_class must be at least 2"):
        report(1)
