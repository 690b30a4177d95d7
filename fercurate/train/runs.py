"""Training runs on a workspace, and the benchmark that compares training sets side by side.

:func:`train_on_workspace` is ``fercurate train``: train on the workspace's leakage-free train
split, select on validation, and only then test once on the test split (overall, per source and per
demographic value), with a confusion plot and an ONNX export checked by onnxruntime.

:func:`run_benchmark` is ``fercurate benchmark``: the same model, seed and time budget trained on
several versions of the training data (``arms``: the original FER2013 training split, the same
with class-weighted loss, with a balanced sampler, and a rebalanced selection), each tested on
FER2013's test split (PrivateTest), on CK+ and JAFFE (cross-dataset, no fine-tuning: they are
never trained on) and on an occluded copy of the test split. Every test set is scored on the
classes the model was trained on only (a FER2013 model has no contempt output, so CK+'s contempt
faces would count as certain errors): faces of other classes are left out, counted per class in
``left_out``, and named in the report. The configuration and a hash of the
workspace's data are recorded so a run can be repeated and compared.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from fercurate.errors import TrainError
from fercurate.export import ExportOptions
from fercurate.options import parse_balance
from fercurate.splits import SplitOptions
from fercurate.train.data import load_images, rows_in_classes, workspace_splits
from fercurate.train.evaluate import evaluate, plot_confusion
from fercurate.train.loop import TrainConfig, TrainProgress, TrainResult, resolve_device, train
from fercurate.train.onnx_export import check_onnx, export_onnx
from fercurate.workspace import Workspace

ARMS = {
    "original": "the training split as it is",
    "class-weighted": "the same rows, loss weighted by inverse class frequency",
    "balanced-sampler": "the same rows, every class drawn equally often",
    "rebalanced": "a rebalanced selection (majority classes subsampled to the target)",
}
Progress = Callable[[TrainProgress], None]


def manifest_hash(workspace: Workspace) -> str:
    """SHA-1 of what the data is (row ids, pixel hashes, labels), independent of file encoding."""
    manifest = workspace.manifest().select(["id", "sha1", "label"])
    digest = hashlib.sha1()
    for batch in manifest.to_batches():
        for column in batch.columns:
            digest.update("\x1f".join(column.to_pylist()).encode())
    return digest.hexdigest()


def occlude(images: np.ndarray, seed: int = 0, share: float = 0.25) -> np.ndarray:
    """A copy of ``images`` (N, H, W) with one gray square covering ``share`` of each face, placed
    at random (seeded) over the central region where eyes and mouth are: the occluded test set."""
    count, height, width = images.shape
    side = int(round(np.sqrt(share) * min(height, width)))
    rng = np.random.default_rng(seed)
    top = rng.integers(height // 6, height - side - height // 6 + 1, count)
    left = rng.integers(width // 6, width - side - width // 6 + 1, count)
    rows = np.arange(height)[None, :, None]
    columns = np.arange(width)[None, None, :]
    mask = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
            & (columns >= left[:, None, None]) & (columns < (left + side)[:, None, None]))
    occluded = images.copy()
    occluded[mask] = 128
    return occluded


def _group_values(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    groups = {"source": rows["source"].to_numpy(dtype=object)}
    for column in ("gender", "age_group", "ethnicity"):
        if column in rows and rows[column].nunique() > 1:
            groups[column] = rows[column].to_numpy(dtype=object)
    return groups


def evaluate_rows(result: TrainResult, workspace: Workspace, rows: pd.DataFrame, tta_flip: bool = False,
                  images: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of a trained model on workspace rows (labels outside its classes are left out and
    counted); ``images`` replaces the rows' own pixels (e.g. an occluded copy)."""
    known, left_out = rows_in_classes(rows, result.label_map)
    if images is None:
        images = load_images(workspace.root, known["filepath"].tolist())
    else:
        images = images[rows["label"].isin(list(result.label_map)).to_numpy()]
    labels = known["label"].map(result.label_map).to_numpy()
    metrics = evaluate(result.model, images, labels, result.class_names, tta_flip=tta_flip,
                       groups=_group_values(known), normalization=result.normalization)
    metrics["rows"] = len(known)
    metrics["left_out"] = left_out
    return metrics


def train_on_workspace(workspace: Workspace, config: TrainConfig, output_dir: Path,
                       split: SplitOptions | None = None, sources: list[str] | None = None,
                       balance: str | Mapping[str, float] | None = None, resume: bool = False,
                       tta_flip: bool = False, onnx: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Train, select on validation, test once; write ``metrics.json``, ``confusion.png``,
    ``best.pt`` / ``last.pt`` and (``onnx``) ``model.onnx`` checked against PyTorch.

    ``balance`` rebalances the training split and takes what ``export --balance`` takes (see
    :func:`~fercurate.options.parse_balance`). The workspace, the device and the balance target
    are checked before any data is loaded or any folder is made."""
    workspace.require()
    resolve_device(config.device)
    target = parse_balance(balance) if balance is not None else None
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainError(f"the run folder {output_dir} is a file", "give a folder for the run's files")
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = workspace_splits(workspace, ExportOptions(split=split or SplitOptions(), sources=sources,
                                                       balance=target))
    if splits["train"].empty or splits["validation"].empty:
        raise TrainError("the workspace has no train or no validation rows under this split strategy",
                         "try --split-strategy grouped")
    result = train(config, splits["train"], splits["validation"], workspace.root, output_dir, resume, progress)
    test = evaluate_rows(result, workspace, splits["test"], tta_flip) if len(splits["test"]) else None
    if test is not None:
        plot_confusion(np.asarray(test["confusion_matrix"]), result.class_names, output_dir / "confusion.png",
                       title=f"{config.model} on the test split")
    summary: dict[str, Any] = {
        "config": json.loads(config.model_dump_json()), "data": {"manifest_sha1": manifest_hash(workspace),
                                                                 "rows": {k: len(v) for k, v in splits.items()}},
        "machine": _machine(result), "training": result.to_dict(), "test": test,
    }
    if onnx:
        path = export_onnx(result.model, output_dir / "model.onnx", result.class_names, result.normalization,
                           model_name=result.model_name)
        sample = (load_images(workspace.root, splits["validation"]["filepath"].head(64).tolist())
                  .astype(np.float32)[:, None] / 255.0 - result.normalization.mean) / result.normalization.std
        summary["onnx"] = {"path": str(path), **check_onnx(path, result.model, sample)}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _machine(result: TrainResult) -> dict[str, Any]:
    import os

    return {"device": result.device, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version()}


class BenchmarkConfig(BaseModel):
    """What the benchmark compares, and on what budget."""

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_minutes=10))
    arms: list[Literal["original", "class-weighted", "balanced-sampler", "rebalanced"]] = Field(
        default_factory=lambda: ["original", "class-weighted", "rebalanced"])
    rebalance_target: str | dict[str, float] = Field(
        "cap:4000", description="the rebalanced arm's target (see export --balance)")
    train_source: str = Field("fer2013", description="the source trained on; other sources are cross-dataset tests")
    occlusion_share: float = Field(0.25, gt=0, lt=1)
    tta_flip: bool = False

    @field_validator("rebalance_target", mode="before")
    @classmethod
    def _known_target(cls, value: str | Mapping[str, float]) -> str | dict[str, float]:
        return parse_balance(value)


def run_benchmark(workspace: Workspace, config: BenchmarkConfig, output_dir: Path,
                  progress: Callable[[str, TrainProgress], None] | None = None) -> dict[str, Any]:
    """Train every arm on the same model, seed and budget; test each on every test set; write
    ``benchmark.json``, ``benchmark.md``, ``benchmark.html`` and plots into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    only_train_source = ExportOptions(sources=[config.train_source])
    base = workspace_splits(workspace, only_train_source)
    manifest = workspace.manifest().drop_columns(["landmarks", "action_units"]).to_pandas()
    cross = {source: manifest[manifest["source"] == source] for source in sorted(set(manifest["source"]))
             if source != config.train_source}
    test_images = load_images(workspace.root, base["test"]["filepath"].tolist())
    occluded = occlude(test_images, seed=config.train.seed, share=config.occlusion_share)
    arms: dict[str, Any] = {}
    for arm in config.arms:
        train_config = config.train.model_copy(update={"class_weights": arm == "class-weighted",
                                                       "balanced_sampler": arm == "balanced-sampler"})
        rows = base
        if arm == "rebalanced":
            rows = workspace_splits(workspace, ExportOptions(sources=[config.train_source],
                                                             balance=config.rebalance_target))
        result = train(train_config, rows["train"], rows["validation"], workspace.root, output_dir / arm,
                       progress=(lambda event, arm=arm: progress(arm, event)) if progress else None)
        tests = {
            f"{config.train_source} test": evaluate_rows(result, workspace, base["test"], config.tta_flip, test_images),
            f"{config.train_source} test, occluded": evaluate_rows(result, workspace, base["test"], config.tta_flip,
                                                                   occluded),
            **{f"{source} (cross-dataset)": evaluate_rows(result, workspace, rows_of, config.tta_flip)
               for source, rows_of in cross.items()},
        }
        plot_confusion(np.asarray(tests[f"{config.train_source} test"]["confusion_matrix"]), result.class_names,
                       output_dir / f"confusion-{arm}.png", title=f"{arm}: {config.train_source} test")
        arms[arm] = {"description": ARMS[arm], "train_rows": len(rows["train"]), "training": result.to_dict(),
                     "tests": tests}
    report = {
        "config": json.loads(config.model_dump_json()),
        "data": {"workspace": str(workspace.root), "manifest_sha1": manifest_hash(workspace),
                 "test_rows": len(base["test"])},
        "machine": _machine(result), "seconds": round(time.time() - started, 1), "arms": arms,
    }
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2, default=str))
    table = benchmark_table(report)
    _plot_benchmark(table, output_dir / "benchmark.png")
    _write_benchmark_pages(report, table, output_dir)
    return report


def benchmark_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, test set): accuracy, macro-F1, balanced accuracy, ECE, and recall per class."""
    records = []
    for arm, facts in report["arms"].items():
        for test_name, metrics in facts["tests"].items():
            recall = {f"recall {name}": round(scores["recall"], 3)
                      for name, scores in metrics["per_class"].items()}
            left_out = ", ".join(f"{count} {label}" for label, count in sorted(metrics["left_out"].items()))
            gaps = {f"{column} gap (accuracy)": _gap_text(metrics["group_report"][column])
                    for column in DEMOGRAPHIC_GROUPS if column in metrics.get("group_report", {})}
            records.append({"training set": arm, "test set": test_name, "rows": metrics["rows"],
                            "left out": left_out, **gaps,
                            "accuracy": round(metrics["accuracy"], 4), "macro-F1": round(metrics["macro_f1"], 4),
                            "balanced accuracy": round(metrics["balanced_accuracy"], 4),
                            "ECE": round(metrics["ece"], 4), **recall})
    return pd.DataFrame(records)


DEMOGRAPHIC_GROUPS = ("gender", "age_group")


def _gap_text(report: dict[str, Any]) -> str:
    gap = report["largest_gap"].get("accuracy")
    return "" if gap is None else f"{gap['gap']:.3f} ({gap['best']} vs {gap['worst']})"


def group_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, test set, demographic group, value): faces, accuracy and macro-F1 with
    their 95% bootstrap intervals."""
    records = []
    for arm, facts in report["arms"].items():
        for test_name, metrics in facts["tests"].items():
            for column, grouped in metrics.get("group_report", {}).items():
                if column not in DEMOGRAPHIC_GROUPS:
                    continue
                for value, scores in grouped["values"].items():
                    records.append({"training set": arm, "test set": test_name, "group": column, "value": value,
                                    "faces": scores["n"],
                                    "accuracy": f"{scores['accuracy']:.3f} [{scores['accuracy_ci'][0]:.3f}, "
                                                f"{scores['accuracy_ci'][1]:.3f}]",
                                    "macro-F1": f"{scores['macro_f1']:.3f} [{scores['macro_f1_ci'][0]:.3f}, "
                                                f"{scores['macro_f1_ci'][1]:.3f}]"})
    return pd.DataFrame(records)


def _plot_benchmark(table: pd.DataFrame, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, metric in zip(axes, ("accuracy", "macro-F1")):
        table.pivot(index="test set", columns="training set", values=metric).plot.bar(ax=axis, rot=15)
        axis.set_title(metric)
        axis.set_ylim(0, 1)
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def _write_benchmark_pages(report: dict[str, Any], table: pd.DataFrame, output_dir: Path) -> None:
    train = report["config"]["train"]
    header = (f"Model {train['model']}, seed {train['seed']}, budget {train['max_minutes']} min per training set "
              f"on {report['machine']['device']} ({report['machine']['cores']} cores); data "
              f"{report['data']['manifest_sha1'][:12]}; {report['seconds']} s in all.")
    epochs = "; ".join(f"{arm}: {facts['train_rows']} training rows, {facts['training']['epochs']:.1f} epochs, "
                       f"best validation {facts['training']['best']['metric']} "
                       f"{facts['training']['best']['value']:.3f}" for arm, facts in report["arms"].items())
    main = table[["training set", "test set", "rows", "left out", "accuracy", "macro-F1", "balanced accuracy", "ECE",
                  *[column for column in table.columns if column.endswith(" gap (accuracy)")]]]
    groups = group_table(report)
    per_group = ("Per perceived gender and age group (95% bootstrap intervals; `unknown` is shown but never part "
                 "of a gap):\n\n" + groups.to_markdown(index=False) + "\n\n") if len(groups) else ""
    left_out = table.loc[table["left out"] != "", ["test set", "left out"]].drop_duplicates()
    scope = ("Every test set is scored on the classes the model was trained on; faces of other classes "
             "cannot be predicted and are left out and counted"
             + (": " + "; ".join(f"{row['test set']}: {row['left out']}" for _, row in left_out.iterrows())
                if len(left_out) else ": none here") + ".")
    recall = table[["training set", "test set", *[c for c in table.columns if c.startswith("recall ")]]]
    (output_dir / "benchmark.md").write_text(
        f"# fercurate benchmark\n\n{header}\n\n{epochs}\n\n{scope}\n\n{main.to_markdown(index=False)}\n\n"
        f"Recall per class:\n\n{recall.to_markdown(index=False)}\n\n{per_group}![benchmark](benchmark.png)\n")
    (output_dir / "benchmark.html").write_text(
        "<!doctype html><meta charset=utf-8><title>fercurate benchmark</title><style>body{font-family:sans-serif}"
        "td,th{padding:2px 8px;text-align:right}</style><h1>fercurate benchmark</h1>"
        f"<p>{header}</p><p>{epochs}</p><p>{scope}</p>{main.to_html(index=False, border=0)}<h2>Recall per class</h2>"
        f"{recall.to_html(index=False, border=0)}"
        + (f"<h2>Per perceived gender and age group</h2>{groups.to_html(index=False, border=0)}" if len(groups) else "")
        + "<img src='benchmark.png' alt='benchmark'>")
