"""The reference classifier: train, evaluate and export the model that proves a curated dataset.

A curated FER dataset is only as good as the model it trains, so fercurate ships a real trainer
rather than a demo loop: a compact VGG (the strong FER2013 baseline) or MobileNetV2, trained from
scratch on 48x48 gray faces with on-device batched augmentation, a time budget that fits the
learning-rate schedule to the time available, exact resume from checkpoints, and model selection
on the validation split only. Evaluation reports what accuracy hides (macro-F1, balanced accuracy,
per-class scores, calibration, per-group metrics), and the selected model exports to ONNX with a
check that onnxruntime agrees with PyTorch.

Typical use::

    from fercurate.train import TrainConfig, train, workspace_splits
    splits = workspace_splits(Workspace("ws"))
    result = train(TrainConfig(model="vgg", max_minutes=30), splits["train"], splits["validation"],
                   "ws", output_dir="runs/vgg")

Modules: :mod:`~fercurate.train.models` (networks), :mod:`~fercurate.train.data` (loading and
augmentation), :mod:`~fercurate.train.loop` (training), :mod:`~fercurate.train.evaluate`
(metrics), :mod:`~fercurate.train.onnx_export` (ONNX).
"""

from __future__ import annotations

from fercurate.compute import load_images, resolve_device, seed_everything
from fercurate.train.data import (
    Augmentation,
    BatchLoader,
    FaceDataset,
    Normalization,
    augment_batch,
    build_label_map,
    rows_in_classes,
    workspace_splits,
)
from fercurate.train.evaluate import (
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    macro_f1,
    metrics_from_probabilities,
    per_class_scores,
    plot_confusion,
    predict_probabilities,
)
from fercurate.train.loop import (
    TrainConfig,
    TrainProgress,
    TrainResult,
    load_classifier,
    steps_within_budget,
    train,
    train_datasets,
)
from fercurate.train.models import MODELS, build_model, parameter_count
from fercurate.train.onnx_export import OnnxMismatch, check_onnx, export_onnx, onnx_metadata

__all__ = [
    "MODELS", "Augmentation", "BatchLoader", "FaceDataset", "Normalization", "OnnxMismatch", "TrainConfig",
    "TrainProgress", "TrainResult", "accuracy", "augment_batch", "balanced_accuracy", "build_label_map",
    "build_model", "check_onnx", "confusion_matrix", "evaluate", "expected_calibration_error", "export_onnx",
    "load_classifier", "load_images", "macro_f1", "metrics_from_probabilities", "onnx_metadata",
    "parameter_count", "per_class_scores", "plot_confusion", "predict_probabilities", "resolve_device",
    "rows_in_classes", "seed_everything", "steps_within_budget", "train", "train_datasets", "workspace_splits",
]
