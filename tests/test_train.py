"""The reference classifier: models build, training learns, resume is exact, the budget holds,
metrics equal hand-computed values (and scikit-learn's), and the ONNX export computes what the
model does. Fast: the tiny model on drawn demo faces, a few steps each."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from fercurate.errors import TrainError, WorkspaceError
from fercurate.sources.demo import draw_demo_faces, open_demo
from fercurate.train import (
    Augmentation,
    FaceDataset,
    Normalization,
    TrainConfig,
    TrainProgress,
    accuracy,
    augment_batch,
    balanced_accuracy,
    build_label_map,
    build_model,
    check_onnx,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    export_onnx,
    load_classifier,
    load_images,
    macro_f1,
    metrics_from_probabilities,
    onnx_metadata,
    parameter_count,
    per_class_scores,
    plot_confusion,
    steps_within_budget,
    train,
    train_datasets,
    workspace_splits,
)
from fercurate.workspace import Workspace

CLASSES = [str(code) for code in range(7)]  # FER2013 codes of the demo faces


@pytest.fixture(scope="module")
def demo_sets() -> tuple[FaceDataset, FaceDataset]:
    """280 drawn faces: 224 to train, 56 to validate."""
    images, codes = draw_demo_faces(per_class=40, seed=0)
    order = np.random.default_rng(0).permutation(len(images))
    train_index, val_index = order[:224], order[224:]
    return (FaceDataset(images[train_index], codes[train_index], [f"demo/{i}" for i in train_index]),
            FaceDataset(images[val_index], codes[val_index], [f"demo/{i}" for i in val_index]))


def tiny_config(**changes: object) -> TrainConfig:
    settings: dict[str, object] = {"model": "tiny", "epochs": 2, "batch_size": 32, "lr": 1e-2, "log_every": 1}
    return TrainConfig(**{**settings, **changes})


# models


@pytest.mark.parametrize(("name", "low", "high"), [("vgg", 5_000_000, 10_000_000),
                                                   ("mobilenet_v2", 2_000_000, 2_500_000), ("tiny", 1, 10_000)])
def test_models_map_a_batch_to_logits(name: str, low: int, high: int) -> None:
    model = build_model(name, 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 48, 48)).shape == (2, 7)
    assert low <= parameter_count(model) <= high


def test_mobilenet_keeps_a_3x3_feature_map() -> None:
    model = build_model("mobilenet_v2", 8).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 1, 48, 48)).shape[-2:] == (3, 3)


def test_unknown_model_and_single_class_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", 7)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("tiny", 1)


# data


def test_load_images_converts_colour_and_size_and_reports_missing_files(tmp_path: Path) -> None:
    colour = np.zeros((96, 80, 3), np.uint8)
    colour[:, :40] = (0, 0, 255)  # left half red (BGR), right half black
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((48, 48), 7, np.uint8))
    images = load_images(tmp_path, ["colour.png", "gray.png"])
    assert images.shape == (2, 48, 48) and images.dtype == np.uint8
    assert images[0, :, :20].mean() == pytest.approx(76, abs=1) and images[0, :, 28:].max() == 0
    assert (images[1] == 7).all()
    with pytest.raises(WorkspaceError, match="1 image"):
        load_images(tmp_path, ["gray.png", "missing.png"])


def test_label_map_follows_canonical_order() -> None:
    assert build_label_map(["sadness", "happiness", "neutral", "happiness"]) == {
        "neutral": 0, "happiness": 1, "sadness": 2}
    with pytest.raises(ValueError, match="canonical"):
        build_label_map(["happy"])


def test_augmentation_is_batched_seeded_and_geometrically_right() -> None:
    x = torch.randn(16, 1, 48, 48)
    first = augment_batch(x, Augmentation(), torch.Generator().manual_seed(3))
    again = augment_batch(x, Augmentation(), torch.Generator().manual_seed(3))
    assert first.shape == x.shape and torch.equal(first, again) and not torch.equal(first, x)
    assert torch.equal(augment_batch(x, Augmentation(enabled=False), torch.Generator()), x)
    flip_only = Augmentation(flip=1.0, rotation=0, scale=(1, 1), translation=0, erasing=0)
    assert torch.allclose(augment_batch(x, flip_only, torch.Generator()), x.flip(-1), atol=1e-5)
    erase_only = Augmentation(flip=0, rotation=0, scale=(1, 1), translation=0, erasing=1.0)
    erased = augment_batch(x, erase_only, torch.Generator().manual_seed(0))
    changed = (erased - x).abs() > 1e-4  # the identity resampling is exact up to float error
    assert changed.any(dim=(1, 2, 3)).all() and (erased[changed] == 0).all()


# metrics

# Three classes; rows are true classes, columns predictions:
#   true 0: 2 right, 1 taken for class 1
#   true 1: 1 right, 1 taken for class 2
#   true 2: 1 right
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_metrics_equal_hand_computed_values() -> None:
    matrix = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = per_class_scores(matrix)
    assert scores["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert scores["recall"] == pytest.approx([2 / 3, 0.5, 1.0])
    assert scores["f1"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert accuracy(matrix) == pytest.approx(4 / 6)
    assert macro_f1(matrix) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert balanced_accuracy(matrix) == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_expected_calibration_error_by_hand() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.5 (wrong) fall in 15-bin bins 13, 13, 10, 7:
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.7| + 1/4 * |0 - 0.5| = 0.2 + 0.075 + 0.125 = 0.4
    probabilities = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2]])
    assert expected_calibration_error(probabilities, np.array([0, 1, 1, 2])) == pytest.approx(0.4)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn_with_an_absent_class() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 4], size=300)  # class 3 never occurs, but is predicted
    probabilities = rng.dirichlet(np.ones(5), size=300)
    y_pred = probabilities.argmax(1)
    result = metrics_from_probabilities(probabilities, y_true, list("abcde"))
    present = [0, 1, 2, 4]
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=present, average="macro"))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(5),
                                                                         zero_division=0)
    for index, name in enumerate("abcde"):
        assert result["per_class"][name] == pytest.approx({"precision": precision[index], "recall": recall[index],
                                                           "f1": f1[index], "support": support[index]})
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(5)).tolist()


# training


def test_a_few_steps_reduce_the_loss(demo_sets: tuple[FaceDataset, FaceDataset]) -> None:
    losses: list[float] = []
    result = train_datasets(tiny_config(epochs=4, augmentation=Augmentation(enabled=False)), *demo_sets, CLASSES,
                            progress=lambda p: losses.append(p.loss) if p.event == "step" else None)
    assert len(losses) == result.steps == 4 * 7
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert result.stopped_by == "completed" and len(result.history) == 4
    assert result.images_per_s > 0 and 0 < result.data_wait_share < 1
    assert result.best["value"] == max(entry["val_macro_f1"] for entry in result.history)


def test_a_step_count_replaces_epochs_whatever_the_training_set_size(
        demo_sets: tuple[FaceDataset, FaceDataset]) -> None:
    train_set, val_set = demo_sets
    half = FaceDataset(train_set.images[: len(train_set) // 2], train_set.labels[: len(train_set) // 2])
    results = [train_datasets(tiny_config(epochs=1, steps=10), faces, val_set, CLASSES) for faces in (train_set, half)]
    assert [result.steps for result in results] == [10, 10] == [result.requested_steps for result in results]
    assert results[1].steps / results[1].steps_per_epoch > results[0].steps / results[0].steps_per_epoch > 1
    assert results[0].stopped_by == "completed" and len(results[0].history) == 2  # a validation per epoch end, and the last


def test_mixed_precision_and_deterministic_modes_train(demo_sets: tuple[FaceDataset, FaceDataset]) -> None:
    result = train_datasets(tiny_config(epochs=1, mixed_precision=True, deterministic=True), *demo_sets, CLASSES)
    assert result.mixed_precision == "bfloat16" and np.isfinite(result.history[-1]["train_loss"])
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training


def test_resume_continues_exactly(demo_sets: tuple[FaceDataset, FaceDataset], tmp_path: Path) -> None:
    config = tiny_config()  # augmentation on, dropout in the model: every RNG matters
    straight = train_datasets(config, *demo_sets, CLASSES, output_dir=tmp_path / "straight")

    def crash_in_epoch_two(progress: TrainProgress) -> None:
        if progress.event == "step" and progress.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_datasets(config, *demo_sets, CLASSES, output_dir=tmp_path / "resumed", progress=crash_in_epoch_two)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["global_step"] == 7
    with pytest.raises(TrainError, match="--resume"):
        train_datasets(config, *demo_sets, CLASSES, output_dir=tmp_path / "resumed")
    with pytest.raises(ValueError, match="config.lr"):
        train_datasets(tiny_config(lr=0.5), *demo_sets, CLASSES, output_dir=tmp_path / "resumed", resume=True)
    resumed = train_datasets(config, *demo_sets, CLASSES, output_dir=tmp_path / "resumed", resume=True)

    last = {name: torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("straight", "resumed")}
    for key, tensor in last["straight"]["model"].items():
        assert torch.equal(tensor, last["resumed"]["model"][key]), key
    for key, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[key]), key
    assert [e["val_accuracy"] for e in straight.history] == [e["val_accuracy"] for e in resumed.history]
    assert resumed.best == straight.best


def test_time_budget_stops_training_and_keeps_the_best(demo_sets: tuple[FaceDataset, FaceDataset],
                                                       tmp_path: Path) -> None:
    result = train_datasets(tiny_config(epochs=10_000, max_minutes=0.02), *demo_sets, CLASSES,
                            output_dir=tmp_path)
    assert result.stopped_by == "time_budget"
    assert 0 < result.steps <= result.planned_steps and result.steps < result.requested_steps
    assert result.seconds < 10
    model, meta = load_classifier(tmp_path / "best.pt")
    assert meta["val_metrics"]["macro_f1"] == result.best["value"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[key])


def test_budget_plan_counts_steps_and_validations() -> None:
    # 1 s per step, 5 s per validation, 10 steps per epoch: 40 steps and 4 validations fill 60 s
    assert steps_within_budget(60, 1.0, 5.0, steps_done=0, steps_wanted=100, steps_per_epoch=10) == 40
    assert steps_within_budget(1e9, 1.0, 5.0, steps_done=0, steps_wanted=100, steps_per_epoch=10) == 100
    assert steps_within_budget(3, 1.0, 5.0, steps_done=0, steps_wanted=100, steps_per_epoch=10) == 0
    # from step 25 (mid epoch 3): 15 more steps reach step 40 with validations at 30 and 40 (25 s)
    assert steps_within_budget(25, 1.0, 5.0, steps_done=25, steps_wanted=100, steps_per_epoch=10) == 40


def test_train_from_workspace_rows(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.ingest(open_demo(tmp_path, per_class=12))
    splits = workspace_splits(workspace)
    result = train(tiny_config(epochs=1, batch_size=16), splits["train"], splits["validation"], workspace.root)
    assert result.class_names == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]
    assert result.label_map["neutral"] == 0 and result.steps == len(splits["train"]) // 16


# evaluation and export


@pytest.fixture(scope="module")
def trained(demo_sets: tuple[FaceDataset, FaceDataset]) -> tuple[torch.nn.Module, Normalization]:
    result = train_datasets(tiny_config(epochs=3), *demo_sets, CLASSES)
    return result.model, result.normalization


def test_evaluate_reports_overall_and_per_group_metrics(trained: tuple[torch.nn.Module, Normalization],
                                                        demo_sets: tuple[FaceDataset, FaceDataset],
                                                        tmp_path: Path) -> None:
    model, normalization = trained
    val = demo_sets[1]
    groups = {"half": np.where(np.arange(len(val)) % 2 == 0, "even", "odd")}
    report = evaluate(model, val.images.numpy(), val.labels.numpy(), CLASSES, groups=groups,
                      normalization=normalization)
    assert report["n"] == len(val) and 0 <= report["ece"] <= 1
    assert sum(np.sum(report["confusion_matrix"], axis=1)) == len(val)
    assert {g["n"] for g in report["groups"]["half"].values()} == {len(val) // 2}
    flipped = evaluate(model, val.images.numpy(), val.labels.numpy(), CLASSES, tta_flip=True,
                       normalization=normalization)
    assert flipped["tta_flip"] and flipped["n"] == len(val)
    with pytest.raises(ValueError, match="normalization"):
        evaluate(model, val.images.numpy(), val.labels.numpy(), CLASSES)
    png = plot_confusion(report["confusion_matrix"], CLASSES, tmp_path / "confusion.png")
    assert cv2.imread(str(png)) is not None


def test_onnx_export_matches_torch(trained: tuple[torch.nn.Module, Normalization],
                                   demo_sets: tuple[FaceDataset, FaceDataset], tmp_path: Path) -> None:
    model, normalization = trained
    path = export_onnx(model, tmp_path / "tiny.onnx", CLASSES, normalization, model_name="tiny")
    sample = normalization.apply(demo_sets[1].images[:24])
    report = check_onnx(path, model, sample)
    assert report["argmax_agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    meta = onnx_metadata(path)
    assert meta["class_names"] == CLASSES and meta["normalization"] == normalization and meta["model_name"] == "tiny"
