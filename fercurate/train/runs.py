"""Training runs on a workspace, and the benchmark that compares training sets side by side.

:func:`train_on_workspace` is ``fercurate train``: train on the workspace's leakage-free train
split, select on validation, and only then test once on the test split (overall, per source and per
demographic value), with a confusion plot and an ONNX export checked by onnxruntime.

:func:`run_benchmark` is ``fercurate benchmark``: the same model and time budget trained, once per
seed, on several versions of the training data (``arms``: the original FER2013 training split, the
same with class-weighted loss, with a balanced sampler, a rebalanced selection, and the split as
``synthesize`` rebalanced it with augmented faces, with a generator's faces, or with all of them), each tested on FER2013's test split
(PrivateTest), on CK+ and JAFFE (cross-dataset, no fine-tuning: they are never trained on), on a copy
of the test split with a gray square over each face, and on the face-aware occluded copy that
``synthesize --occluded-test`` writes. Each arm is compared with the first with an interval, and a
difference is called a finding only across several seeds (:func:`compare_arms`). Every test set is scored on the
classes the model was trained on only (a FER2013 model has no contempt output, so CK+'s contempt
faces would count as certain errors): faces of other classes are left out, counted per class in
``left_out``, and named in the report. Training and tests read the aligned faces where ``fercurate
align`` made them; ``faces="both"`` runs every arm on the faces as ingested too, first, so the
comparison says what alignment does. The configuration and a hash of the workspace's data are
recorded so a run can be repeated and compared.
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
from fercurate.options import Faces, parse_balance
from fercurate.schema import face_filepaths
from fercurate.splits import SplitOptions
from fercurate.synth.run import OCCLUDED_TEST_FLAG
from fercurate.train.data import load_images, rows_in_classes, workspace_splits
from fercurate.train.evaluate import evaluate, paired_bootstrap_difference, plot_confusion
from fercurate.train.loop import TrainConfig, TrainProgress, TrainResult, resolve_device, train
from fercurate.train.onnx_export import check_onnx, export_onnx
from fercurate.workspace import Workspace

ARMS = {
    "original": "the training split as it is",
    "class-weighted": "the same rows, loss weighted by inverse class frequency",
    "balanced-sampler": "the same rows, every class drawn equally often",
    "rebalanced": "a rebalanced selection (majority classes subsampled to the target)",
    "augmented": "the training split as `fercurate synthesize` rebalanced it (classes above its target "
                 "subsampled by its plan, those below filled with occlusion-augmented faces)",
    "cgan": "the same rebalanced split, filled with the faces of the conditional GAN",
    "ddpm": "the same rebalanced split, filled with the faces of the diffusion model",
    "mix": "the same rebalanced split, filled with every kind of synthetic face the workspace holds",
}
#: The synthetic arms and the generator family whose rows each trains on (None: all of them).
SYNTHETIC_ARMS: dict[str, str | None] = {"augmented": "augment", "cgan": "cgan", "ddpm": "ddpm", "mix": None}
Arm = Literal["original", "class-weighted", "balanced-sampler", "rebalanced", "augmented", "cgan", "ddpm", "mix"]
Progress = Callable[[TrainProgress], None]
FACES = {"aligned": "the aligned faces (where `fercurate align` made them)", "original": "the faces as ingested"}


def faces_as(rows: pd.DataFrame, variant: str) -> pd.DataFrame:
    """``rows`` read as ``variant`` faces: ``original`` hides the aligned face, so every reader
    (:func:`~fercurate.schema.face_filepaths`) takes the image as ingested."""
    return rows if variant == "aligned" or "aligned_filepath" not in rows else rows.assign(aligned_filepath=None)


def manifest_hash(workspace: Workspace) -> str:
    """SHA-1 of what the data is (row ids, pixel hashes, labels, aligned faces), independent of file
    encoding."""
    manifest = workspace.manifest().select(["id", "sha1", "label", "aligned_filepath"])
    digest = hashlib.sha1()
    for batch in manifest.to_batches():
        for column in batch.columns:
            digest.update("\x1f".join(value or "" for value in column.to_pylist()).encode())
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
                  images: np.ndarray | None = None, predictions: bool = False) -> dict[str, Any]:
    """Metrics of a trained model on workspace rows (labels outside its classes are left out and
    counted); ``images`` replaces the rows' own pixels (e.g. an occluded copy); ``predictions`` keeps
    every face's true and predicted class (see :func:`~fercurate.train.evaluate.evaluate`)."""
    known, left_out = rows_in_classes(rows, result.label_map)
    if images is None:
        images = load_images(workspace.root, face_filepaths(known))
    else:
        images = images[rows["label"].isin(list(result.label_map)).to_numpy()]
    labels = known["label"].map(result.label_map).to_numpy()
    metrics = evaluate(result.model, images, labels, result.class_names, tta_flip=tta_flip,
                       groups=_group_values(known), normalization=result.normalization, predictions=predictions)
    metrics["rows"] = len(known)
    metrics["left_out"] = left_out
    return metrics


def train_on_workspace(workspace: Workspace, config: TrainConfig, output_dir: Path,
                       split: SplitOptions | None = None, sources: list[str] | None = None,
                       balance: str | Mapping[str, float] | None = None, resume: bool = False,
                       tta_flip: bool = False, onnx: bool = True, progress: Progress | None = None, *,
                       exclude_flags: list[str] | None = None) -> dict[str, Any]:
    """Train, select on validation, test once; write ``metrics.json``, ``confusion.png``,
    ``best.pt`` / ``last.pt`` and (``onnx``) ``model.onnx`` checked against PyTorch.

    ``balance`` rebalances the training split and takes what ``export --balance`` takes (see
    :func:`~fercurate.options.parse_balance`); rows carrying any of ``exclude_flags`` are left out of
    every split, as ``export --exclude-flag`` leaves them out. The workspace, the device and the
    balance target are checked before any data is loaded or any folder is made."""
    workspace.require()
    resolve_device(config.device)
    target = parse_balance(balance) if balance is not None else None
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainError(f"the run folder {output_dir} is a file", "give a folder for the run's files")
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = workspace_splits(workspace, ExportOptions(split=split or SplitOptions(), sources=sources,
                                                       balance=target, exclude_flags=exclude_flags or []))
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
        sample = (load_images(workspace.root, face_filepaths(splits["validation"].head(64)))
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
    arms: list[Arm] = Field(
        default_factory=lambda: ["original", "class-weighted", "rebalanced"], min_length=1)
    seeds: list[int] | None = Field(None, min_length=1, description="training seeds, each arm trained once per "
                                                                   "seed (None: the train config's seed)")
    rebalance_target: str | dict[str, float] = Field(
        "cap:4000", description="the rebalanced arm's target (see export --balance)")
    train_source: str = Field("fer2013", description="the source trained on; other sources are cross-dataset tests")
    occlusion_share: float = Field(0.25, gt=0, lt=1)
    tta_flip: bool = False
    faces: Faces = Field("aligned", description="train and test on the aligned faces (where `fercurate align` made "
                                                "them), on the faces as ingested, or both: every arm twice")

    @property
    def face_variants(self) -> list[str]:
        return ["original", "aligned"] if self.faces == "both" else [self.faces]

    @field_validator("rebalance_target", mode="before")
    @classmethod
    def _known_target(cls, value: str | Mapping[str, float]) -> str | dict[str, float]:
        return parse_balance(value)

    @field_validator("arms", "seeds")
    @classmethod
    def _distinct(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"{value} repeats an entry")
        return value

    @property
    def training_seeds(self) -> list[int]:
        return self.seeds if self.seeds is not None else [self.train.seed]


def _arm_splits(workspace: Workspace, arm: str, config: BenchmarkConfig, base: dict[str, pd.DataFrame],
                manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The splits an arm trains and validates on (its test split is always ``base``'s)."""
    if arm == "rebalanced":
        return workspace_splits(workspace, ExportOptions(sources=[config.train_source], balance=config.rebalance_target,
                                                         apply_rebalance_drops=False))
    if arm not in SYNTHETIC_ARMS:
        return base
    family = SYNTHETIC_ARMS[arm]
    how = f"run `fercurate synthesize -w WS --target ... --method {family or 'mix'}` first"
    if not (manifest["is_synthetic"].fillna(False).astype(bool) & (manifest["source"] == "synthetic")).any():
        raise TrainError(f"the {arm} arm needs synthetic training rows and the workspace has none", how)
    rows = workspace_splits(workspace, ExportOptions(sources=[config.train_source, "synthetic"],
                                                     exclude_flags=[OCCLUDED_TEST_FLAG]))
    train = rows["train"]
    synthetic = (train["source"] == "synthetic").to_numpy()
    generators = train["generator"].fillna("")
    chosen = synthetic if family is None else synthetic & (generators.str.startswith(f"{family}:")).to_numpy()
    # an augmented face must derive from the training source (a generated one learnt from the training split)
    parent_source = train["parent_id"].map(manifest.set_index("id")["source"])
    own = (parent_source.eq(config.train_source) | train["parent_id"].isna()).to_numpy()
    if not (chosen & own).any():
        raise TrainError(f"the {arm} arm needs synthetic training rows ({family or 'any'}) of {config.train_source} "
                         "and the workspace has none", how)
    return {**rows, "train": train[~synthetic | (chosen & own)].reset_index(drop=True)}


def _aligned_rows(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per source: its rows, and how many have an aligned face."""
    aligned = manifest["aligned_filepath"].notna()
    return {str(source): {"rows": int(len(part)), "aligned": int(aligned[part.index].sum())}
            for source, part in manifest.groupby("source")}


def _occluded_test_rows(manifest: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The face-aware occluded copies (``synthesize --occluded-test``) of ``test``'s rows."""
    flagged = manifest["flags"].map(lambda flags: flags is not None and OCCLUDED_TEST_FLAG in flags)
    return manifest[flagged & manifest["parent_id"].isin(test["id"])].reset_index(drop=True)


def run_benchmark(workspace: Workspace, config: BenchmarkConfig, output_dir: Path,
                  progress: Callable[[str, TrainProgress], None] | None = None) -> dict[str, Any]:
    """Train every arm once per seed on the same model and budget; test each on every test set;
    compare every arm with the first, with intervals (see :func:`compare_arms`); write
    ``benchmark.json``, ``benchmark.md``, ``benchmark.html`` and plots into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    manifest = workspace.manifest().drop_columns(["landmarks", "action_units", "alignment"]).to_pandas()
    base = workspace_splits(workspace, ExportOptions(sources=[config.train_source], apply_rebalance_drops=False))
    if base["test"].empty:
        raise TrainError(f"the workspace has no {config.train_source} test rows, so there is nothing to score the "
                         "training sets on", "ingest the source's test split too (FER2013's PrivateTest rows), or "
                         "give --train-source a source that has one")
    cross = {source: manifest[manifest["source"] == source] for source in sorted(set(manifest["source"]))
             if source not in (config.train_source, "synthetic")}
    test_name = f"{config.train_source} test"
    face_aware = _occluded_test_rows(manifest, base["test"])
    splits = {arm: _arm_splits(workspace, arm, config, base, manifest) for arm in config.arms}  # fail before training
    both = len(config.face_variants) > 1
    arms: dict[str, Any] = {}
    for variant in config.face_variants:
        test_rows = faces_as(base["test"], variant)
        test_images = load_images(workspace.root, face_filepaths(test_rows))
        squares = occlude(test_images, seed=config.train.seed, share=config.occlusion_share)
        for arm in config.arms:
            rows = {name: faces_as(frame, variant) for name, frame in splits[arm].items()}
            key = f"{arm} ({variant} faces)" if both else arm
            runs = {}
            for seed in config.training_seeds:
                train_config = config.train.model_copy(update={"class_weights": arm == "class-weighted",
                                                               "balanced_sampler": arm == "balanced-sampler",
                                                               "seed": seed})
                name = key if len(config.training_seeds) == 1 else f"{key}/seed-{seed}"
                folder = name.replace(" (", "-").replace(" faces)", "")
                result = train(train_config, rows["train"], rows["validation"], workspace.root, output_dir / folder,
                               progress=(lambda event, name=name: progress(name, event)) if progress else None)

                def scored(rows_of: pd.DataFrame, images: np.ndarray | None = None) -> dict[str, Any]:
                    return evaluate_rows(result, workspace, rows_of, config.tta_flip, images, predictions=True)
                tests = {test_name: scored(test_rows, test_images),
                         f"{test_name}, occluded (square)": scored(test_rows, squares)}
                if len(face_aware):
                    tests[f"{test_name}, occluded (face-aware)"] = scored(face_aware)
                tests.update({f"{source} (cross-dataset)": scored(faces_as(rows_of, variant))
                              for source, rows_of in cross.items()})
                plot_confusion(np.asarray(tests[test_name]["confusion_matrix"]), result.class_names,
                               output_dir / f"confusion-{folder.replace('/', '-')}.png", title=f"{name}: {test_name}")
                runs[str(seed)] = {"training": result.to_dict(), "tests": tests}
            arms[key] = {"description": ARMS[arm] + (f", on {FACES[variant]}" if both else ""), "faces": variant,
                         "train_rows": len(rows["train"]),
                         "synthetic_train_rows": int((rows["train"]["source"] == "synthetic").sum()), "seeds": runs}
    report = {
        "config": json.loads(config.model_dump_json()),
        "data": {"workspace": str(workspace.root), "manifest_sha1": manifest_hash(workspace),
                 "test_rows": len(base["test"]), "face_aware_occluded_rows": len(face_aware),
                 "aligned_rows": _aligned_rows(manifest)},
        "machine": _machine(result), "seconds": round(time.time() - started, 1), "arms": arms,
    }
    if not len(face_aware):
        report["notes"] = ["no face-aware occluded test rows: `fercurate synthesize -w WS --occluded-test` adds them"]
    report["comparisons"] = compare_arms(report)
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2, default=str))
    table = benchmark_table(report)
    _plot_benchmark(table, output_dir / "benchmark.png")
    _write_benchmark_pages(report, table, output_dir)
    return report


def compare_arms(report: dict[str, Any], *, level: float = 0.95) -> list[dict[str, Any]]:
    """Every arm against the first, per test set, in accuracy and macro-F1: the mean difference over
    seeds and its interval. With several seeds the interval is Student's t over the per-seed
    differences (the noise of training), and a difference is a finding only when it excludes zero;
    with one seed it is a paired bootstrap over the test faces (the test sample's noise only), and
    no difference is called a finding. Every record also has that paired bootstrap (``test-face
    interval``, the seed pairs' predictions pooled): how much of a difference the test faces alone
    could make."""
    from scipy import stats

    names = list(report["arms"])
    baseline = report["arms"][names[0]]["seeds"]
    records = []
    for arm in names[1:]:
        runs = report["arms"][arm]["seeds"]
        seeds = [seed for seed in runs if seed in baseline]
        for test_name in runs[seeds[0]]["tests"]:
            for metric in ("accuracy", "macro_f1"):
                differences = np.array([runs[seed]["tests"][test_name][metric]
                                        - baseline[seed]["tests"][test_name][metric] for seed in seeds])
                ours = [runs[seed]["tests"][test_name] for seed in seeds]
                theirs = [baseline[seed]["tests"][test_name] for seed in seeds]
                paired = all(a["class_names"] == b["class_names"] and "predictions" in a for a, b in zip(ours, theirs))
                faces_low, faces_high = paired_bootstrap_difference(  # the test faces' noise, seed pairs pooled
                    np.concatenate([a["true_labels"] for a in ours]), np.concatenate([a["predictions"] for a in ours]),
                    np.concatenate([b["predictions"] for b in theirs]), len(ours[0]["class_names"]),
                    level=level)[metric] if paired else (float("nan"), float("nan"))
                if len(seeds) >= 2:
                    half = stats.t.ppf((1 + level) / 2, len(seeds) - 1) * differences.std(ddof=1) / np.sqrt(len(seeds))
                    low, high = differences.mean() - half, differences.mean() + half
                    verdict = "finding" if low > 0 or high < 0 else "within noise"
                    kind = f"t over {len(seeds)} seeds"
                else:
                    low, high = faces_low, faces_high
                    verdict, kind = "one seed: not a finding", "bootstrap over test faces"
                records.append({"training set": arm, "versus": names[0], "test set": test_name, "metric": metric,
                                "seeds": len(seeds), "difference": round(float(differences.mean()), 4),
                                "interval": [round(float(low), 4), round(float(high), 4)], "interval kind": kind,
                                "test-face interval": [round(float(faces_low), 4), round(float(faces_high), 4)],
                                "verdict": verdict})
    return records


def benchmark_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, test set): the mean over seeds of accuracy, macro-F1, balanced accuracy,
    ECE and recall per class (with the spread over seeds when there are several); the demographic
    gap columns are the first seed's (:func:`group_table` has every seed's groups)."""
    records = []
    for arm, facts in report["arms"].items():
        runs = list(facts["seeds"].values())
        for test_name, first in runs[0]["tests"].items():
            every = [run["tests"][test_name] for run in runs]

            def mean(values: list[float]) -> float:
                return round(float(np.mean(values)), 4)
            recall = {f"recall {name}": round(float(np.mean([m["per_class"][name]["recall"] for m in every])), 3)
                      for name in first["per_class"]}
            left_out = ", ".join(f"{count} {label}" for label, count in sorted(first["left_out"].items()))
            gaps = {f"{column} gap (accuracy)": _gap_text(first["group_report"][column])
                    for column in DEMOGRAPHIC_GROUPS if column in first.get("group_report", {})}
            spread = ({"accuracy sd": round(float(np.std([m["accuracy"] for m in every], ddof=1)), 4)}
                      if len(every) > 1 else {})
            records.append({"training set": arm, "test set": test_name, "rows": first["rows"], "seeds": len(every),
                            "left out": left_out, **gaps,
                            "accuracy": mean([m["accuracy"] for m in every]), **spread,
                            "macro-F1": mean([m["macro_f1"] for m in every]),
                            "balanced accuracy": mean([m["balanced_accuracy"] for m in every]),
                            "ECE": mean([m["ece"] for m in every]), **recall})
    return pd.DataFrame(records)


def comparison_table(report: dict[str, Any]) -> pd.DataFrame:
    """:func:`compare_arms`'s records as a table (interval as text)."""
    def text(interval: list[float]) -> str:
        return f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"
    return pd.DataFrame([{**record, "interval": text(record["interval"]),
                          **({"test-face interval": text(record["test-face interval"])}
                             if "test-face interval" in record else {})}
                         for record in report.get("comparisons", [])])


DEMOGRAPHIC_GROUPS = ("gender", "age_group")


def _gap_text(report: dict[str, Any]) -> str:
    gap = report["largest_gap"].get("accuracy")
    return "" if gap is None else f"{gap['gap']:.3f} ({gap['best']} vs {gap['worst']})"


def group_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, seed, test set, demographic group, value): faces, accuracy and macro-F1 with
    their 95% bootstrap intervals."""
    records = []
    for arm, facts in report["arms"].items():
        for seed, run in facts["seeds"].items():
            for test_name, metrics in run["tests"].items():
                for column, grouped in metrics.get("group_report", {}).items():
                    if column not in DEMOGRAPHIC_GROUPS:
                        continue
                    for value, scores in grouped["values"].items():
                        records.append({"training set": arm, "seed": seed, "test set": test_name, "group": column,
                                        "value": value,
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
    seeds = next(iter(report["arms"].values()))["seeds"]
    steps = f"{train['steps']} optimisation steps or " if train.get("steps") else ""
    header = (f"Model {train['model']}, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}, budget "
              f"{steps}{train['max_minutes']} min per training set and seed on {report['machine']['device']} "
              f"({report['machine']['cores']} cores); data {report['data']['manifest_sha1'][:12]}; "
              f"{report['seconds']} s in all.")
    epochs = "; ".join(f"{arm} (seed {seed}): {facts['train_rows']} training rows"
                       + (f" ({facts['synthetic_train_rows']} synthetic)" if facts["synthetic_train_rows"] else "")
                       + f", {run['training']['steps']} steps ({run['training']['epochs']:.1f} epochs), best validation "
                       f"{run['training']['best']['metric']} {run['training']['best']['value']:.3f}"
                       for arm, facts in report["arms"].items() for seed, run in facts["seeds"].items())
    notes = " ".join(report.get("notes", []))
    main = table[["training set", "test set", "rows", "seeds", "left out", "accuracy",
                  *(["accuracy sd"] if "accuracy sd" in table else []), "macro-F1", "balanced accuracy", "ECE",
                  *[column for column in table.columns if column.endswith(" gap (accuracy)")]]]
    comparisons = comparison_table(report)
    compared = ((f"Each training set against {comparisons['versus'].iloc[0]} (difference of the mean over seeds, "
                 "95% interval; a finding needs several seeds and an interval that excludes zero):\n\n"
                 + comparisons.drop(columns="versus").to_markdown(index=False) + "\n\n") if len(comparisons) else "")
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
        f"# fercurate benchmark\n\n{header}\n\n{epochs}\n\n{scope} {notes}\n\n{main.to_markdown(index=False)}\n\n"
        f"{compared}Recall per class (mean over seeds):\n\n{recall.to_markdown(index=False)}\n\n{per_group}"
        "![benchmark](benchmark.png)\n")
    (output_dir / "benchmark.html").write_text(
        "<!doctype html><meta charset=utf-8><title>fercurate benchmark</title><style>body{font-family:sans-serif}"
        "td,th{padding:2px 8px;text-align:right}</style><h1>fercurate benchmark</h1>"
        f"<p>{header}</p><p>{epochs}</p><p>{scope} {notes}</p>{main.to_html(index=False, border=0)}"
        + (f"<h2>Against {comparisons['versus'].iloc[0]}</h2>{comparisons.to_html(index=False, border=0)}"
           if len(comparisons) else "")
        + f"<h2>Recall per class</h2>{recall.to_html(index=False, border=0)}"
        + (f"<h2>Per perceived gender and age group</h2>{groups.to_html(index=False, border=0)}" if len(groups) else "")
        + "<img src='benchmark.png' alt='benchmark'>")
