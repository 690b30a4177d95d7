"""The training loop of the reference classifier: budgeted, resumable, and honest about its numbers.

What it does, and why:

- **Model selection on the validation split only.** After every epoch the model is scored on the
  validation faces (macro-F1 by default: accuracy rewards ignoring FER2013's rare classes) and the
  best weights are kept; the test split is never looked at while training.
- **Time budget.** With ``max_minutes`` the loop times its first steps, fits the learning-rate
  schedule to the number of steps (and validations) that fit the budget, and anneals the rate to
  its end inside it, so a 10-minute run is a complete short run, not a long run cut off at a high
  learning rate. The plan is refreshed every few dozen steps from the pace actually achieved (a
  shared machine speeds up and slows down); if the run still runs over, it stops at once,
  validates, and keeps the best checkpoint. A resumed run keeps its plan; the budget of the
  resumed session only bounds it.
- **Exact resume.** ``output_dir/last.pt`` holds the model, optimizer, scheduler, gradient scaler,
  position (epoch and step), every RNG state (torch, CUDA, numpy, python, augmentation) and the
  best score so far; it is written after every validation. Resuming continues the same run: on
  CPU, 2 epochs straight and 1 epoch + resume + 1 epoch give the same weights bit for bit.
  ``output_dir/best.pt`` holds the selected model with everything inference needs (class names,
  label map, normalisation); :func:`load_classifier` reads it.
- **Throughput is measured, not assumed.** Images per second and the share of step time spent
  preparing batches (gather, normalise, augment) are recorded per epoch and overall.

Mixed precision is used on CUDA (bfloat16 where the GPU has it, else float16 with a gradient
scaler); CPU runs are float32 unless asked.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import nn

from fercurate.atomic import atomic_path
from fercurate.compute import autocast_dtype, resolve_device, seed_everything
from fercurate.errors import TrainError
from fercurate.options import ModelName, Optimizer, Schedule, parse_device

from fercurate.train.data import (
    Augmentation,
    BatchLoader,
    FaceDataset,
    Normalization,
    build_label_map,
    rows_in_classes,
)
from fercurate.train.evaluate import metrics_from_probabilities, predict_probabilities
from fercurate.train.models import build_model

CHECKPOINT_FORMAT = "fercurate-train/1"
CLASSIFIER_FORMAT = "fercurate-classifier/1"
#: Config fields that may differ when resuming: they do not change what is computed.
RESUMABLE_CHANGES = frozenset({"max_minutes", "log_every"})
_WARMUP_STEPS = 2  # first steps of a session, not timed: they pay for allocation and autotuning
_CALIBRATION_STEPS = 20  # steps timed before a budget is first turned into a step count
_REPLAN_EVERY = 50  # steps between later re-plans, which follow the machine's actual pace
_BUDGET_SAFETY = 0.95  # share of the remaining budget the plan may fill
_VALIDATION_COST = 0.4  # before one is timed: validating a face costs this share of training on one


class TrainConfig(BaseModel):
    """How to train the reference classifier. The defaults follow common FER2013 practice (AdamW,
    one-cycle schedule, label smoothing, flip/affine/erasing augmentation); they have not been tuned
    by full-length runs here, which need a GPU."""

    model: ModelName = "vgg"
    epochs: int = Field(40, ge=1)
    steps: int | None = Field(None, ge=1, description="optimisation steps, instead of epochs x steps per epoch: "
                                                      "training sets of different sizes then get the same number")
    batch_size: int | None = Field(None, ge=2, description="None: 64 on CPU, 256 on CUDA")
    optimizer: Optimizer = "adamw"
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.05, ge=0, description="on conv and linear weights, not on biases or norms")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum")
    schedule: Schedule = "onecycle"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    balanced_sampler: bool = Field(False, description="draw every class equally often")
    augmentation: Augmentation = Field(default_factory=Augmentation)
    mixed_precision: bool | None = Field(None, description="None: on with CUDA, off on CPU")
    device: str = Field("auto", description="auto (CUDA if available), cpu, cuda, cuda:1, ...; gpu means cuda")
    seed: int = 0
    deterministic: bool = Field(False, description="deterministic CUDA kernels (slower); CPU runs always are")
    max_minutes: float | None = Field(None, gt=0, description="time budget for the whole call, loading included")
    select_metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    log_every: int = Field(10, ge=1, description="steps between progress reports")

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return parse_device(value)

    @model_validator(mode="after")
    def _one_imbalance_correction(self) -> TrainConfig:
        if self.class_weights and self.balanced_sampler:
            raise ValueError("class_weights and balanced_sampler both correct class imbalance: choose one")
        return self


@dataclass
class TrainProgress:
    """What the progress callback is told: every ``log_every`` steps (``event="step"``) and after
    every validation (``event="validation"``, with the validation scores). ``epoch`` counts from 1."""

    event: Literal["step", "validation"]
    epoch: int
    epochs: int
    step: int
    steps_total: int
    loss: float | None
    lr: float
    images_per_s: float
    elapsed_s: float
    val_accuracy: float | None = None
    val_macro_f1: float | None = None


@dataclass
class TrainResult:
    """A finished (or budget-stopped) run: the selected model and how it got there."""

    model: nn.Module  # the best weights by validation score, in eval mode
    model_name: str
    class_names: list[str]
    label_map: dict[str, int]
    normalization: Normalization
    best: dict[str, Any]  # epoch, step, metric, value, and the validation metrics
    history: list[dict[str, Any]]  # one entry per validation
    stopped_by: Literal["completed", "time_budget"]
    steps: int
    planned_steps: int
    requested_steps: int
    steps_per_epoch: int
    batch_size: int
    device: str
    mixed_precision: str | None
    seconds: float
    images_per_s: float
    data_wait_share: float
    checkpoint: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the model is described, not included)."""
        summary = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "model"}
        summary["normalization"] = asdict(self.normalization)
        summary["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        summary["epochs"] = self.steps / self.steps_per_epoch
        return summary


class _Schedule:
    """Learning-rate factor per step for ``torch.optim.lr_scheduler.LambdaLR``. A callable object
    rather than a function so that LambdaLR saves ``total_steps`` with its state, and so that the
    time budget can shorten the schedule after the first steps are timed.

    ``onecycle``: cosine warm-up from 1/25 of the peak over the first 30% of steps, then cosine
    annealing to 1/250000 of it (``torch.optim.lr_scheduler.OneCycleLR``'s defaults).
    ``cosine``: linear warm-up over the first 3% of steps, then cosine annealing to 0.
    """

    def __init__(self, kind: str, total_steps: int) -> None:
        self.kind = kind
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.total_steps, 1), 1.0)
        if self.kind == "onecycle":
            start, end, warm = 1 / 25, 1 / 250_000, 0.3
            if progress < warm:
                return start + (1 - start) * (1 - math.cos(math.pi * progress / warm)) / 2
            return end + (1 - end) * (1 + math.cos(math.pi * (progress - warm) / (1 - warm))) / 2
        warm = 0.03
        if progress < warm:
            return (step + 1) / (warm * self.total_steps + 1)
        return (1 + math.cos(math.pi * (progress - warm) / (1 - warm))) / 2


class _StepClock:
    """Time spent preparing batches and in whole steps. On CPU with the wall clock; on CUDA with
    events, read in bulk at :meth:`collect`, so timing adds no synchronisation per step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.data_seconds = 0.0
        self.step_seconds = 0.0
        self._pending: list[tuple[Any, Any, Any]] = []

    def mark(self) -> Any:
        """A point in time: a recorded CUDA event, or the wall clock."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, start: Any, ready: Any, done: Any) -> None:
        """Account one step: batch preparation from ``start`` to ``ready``, the whole step to ``done``."""
        if self.cuda:
            self._pending.append((start, ready, done))
        else:
            self.data_seconds += ready - start
            self.step_seconds += done - start

    def collect(self) -> None:
        """Add up the CUDA steps recorded so far (waits for them to finish)."""
        for start, ready, done in self._pending:
            done.synchronize()
            self.data_seconds += start.elapsed_time(ready) / 1000
            self.step_seconds += start.elapsed_time(done) / 1000
        self._pending.clear()

    def data_share(self) -> float:
        """Share of step time spent preparing batches so far."""
        self.collect()
        return self.data_seconds / self.step_seconds if self.step_seconds else 0.0

    def total_step_seconds(self) -> float:
        """Seconds spent in steps so far (waits for the GPU's pending steps to be timed)."""
        self.collect()
        return self.step_seconds


def steps_within_budget(seconds_left: float, seconds_per_step: float, seconds_per_validation: float,
                        steps_done: int, steps_wanted: int, steps_per_epoch: int) -> int:
    """The largest total step count, between ``steps_done`` and ``steps_wanted``, whose remaining
    steps fit in ``seconds_left`` together with their validations (one at every epoch end they
    reach, and one at the end)."""

    def cost(total: int) -> float:
        validations = math.ceil(total / steps_per_epoch) - steps_done // steps_per_epoch
        return (total - steps_done) * seconds_per_step + validations * seconds_per_validation

    low, high = steps_done, steps_wanted  # cost(low) is 0; find the last total that fits
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= seconds_left:
            low = middle
        else:
            high = middle - 1
    return low


@contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels (or cuDNN autotuning when not) for the duration of training only."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": _numpy_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    """numpy's legacy global state in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["gauss"]))
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(train_set: FaceDataset, val_set: FaceDataset) -> str:
    """SHA-1 of the training and validation ids and labels: a resumed run must see the same data."""
    digest = hashlib.sha1()
    for dataset in (train_set, val_set):
        digest.update("\n".join(dataset.ids).encode())
        digest.update(dataset.labels.cpu().numpy().tobytes())
    return digest.hexdigest()


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write a checkpoint under a temporary name and rename it into place (never half a file)."""
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only: decaying biases and norm scales only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None: float32); mixed precision is on by default on CUDA only."""
    return autocast_dtype(config.mixed_precision if config.mixed_precision is not None else device.type == "cuda", device)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model in a ``best.pt`` (eval mode, on ``device``) and its metadata: ``model_name``,
    ``class_names``, ``label_map``, ``normalization`` (a :class:`Normalization`), ``config``,
    ``val_metrics``, ``epoch``, ``step``."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format") != CLASSIFIER_FORMAT:
        raise TrainError(f"{path} is not a fercurate classifier checkpoint ({CLASSIFIER_FORMAT})",
                         "give the best.pt of a `fercurate train` run folder")
    model = build_model(payload["model_name"], len(payload["class_names"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device, memory_format=torch.channels_last).eval()
    meta = {key: value for key, value in payload.items() if key not in ("state_dict", "format")}
    meta["normalization"] = Normalization(**payload["normalization"])
    return model, meta


def train(config: TrainConfig, rows_train: pd.DataFrame, rows_val: pd.DataFrame, workspace_root: str | Path,
          output_dir: str | Path | None = None, resume: bool = False,
          progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train on workspace rows (columns ``id``, ``filepath``, ``label``; e.g. the train and validation
    rows of :func:`fercurate.export.plan_export`) and select the model on the validation rows.

    Classes are the canonical labels present in ``rows_train``; validation rows of other labels
    are left out and counted in ``notes``. See :func:`train_datasets` for the rest.
    """
    started = time.monotonic()
    label_map = build_label_map(rows_train["label"])
    rows_val, left_out = rows_in_classes(rows_val, label_map)
    train_set = FaceDataset.from_rows(rows_train, workspace_root, label_map)
    val_set = FaceDataset.from_rows(rows_val, workspace_root, label_map)
    notes = {"validation_rows_left_out": left_out} if left_out else {}
    return train_datasets(config, train_set, val_set, list(label_map), output_dir, resume, progress,
                          started=started, notes=notes)


def train_datasets(config: TrainConfig, train_set: FaceDataset, val_set: FaceDataset, class_names: list[str],
                   output_dir: str | Path | None = None, resume: bool = False,
                   progress: Callable[[TrainProgress], None] | None = None, started: float | None = None,
                   notes: dict[str, Any] | None = None) -> TrainResult:
    """Train ``config.model`` on faces already in memory; ``class_names[i]`` names class index i.

    With ``output_dir``, checkpoints go there (``last.pt`` after every validation, ``best.pt`` for
    the selected model); an existing ``last.pt`` is continued when ``resume`` is true and refused
    otherwise. ``progress`` gets a :class:`TrainProgress` every ``config.log_every`` steps and after
    each validation. ``started`` (a ``time.monotonic()`` value) is when the time budget began.
    """
    run = _Run(config, train_set, val_set, class_names, output_dir, progress,
               started if started is not None else time.monotonic(), dict(notes or {}))
    with _determinism(config.deterministic):
        if resume and run.last_path is not None and run.last_path.exists():
            run.load(run.last_path)
        elif run.last_path is not None and run.last_path.exists():
            raise TrainError(f"{run.last_path} exists (an earlier run)", "pass --resume to continue it, or train into "
                             "another folder")
        return run.fit()


class _Run:
    """The state of one training run and the steps that advance it."""

    def __init__(self, config: TrainConfig, train_set: FaceDataset, val_set: FaceDataset, class_names: list[str],
                 output_dir: str | Path | None, progress: Callable[[TrainProgress], None] | None,
                 started: float, notes: dict[str, Any]) -> None:
        if len(val_set) == 0:
            raise TrainError("no validation faces: model selection needs a validation split",
                             "try --split-strategy grouped")
        num_classes = len(class_names)
        for name, dataset in (("training", train_set), ("validation", val_set)):
            if len(dataset) and (int(dataset.labels.min()) < 0 or int(dataset.labels.max()) >= num_classes):
                raise ValueError(f"{name} labels must be class indices 0..{num_classes - 1}")
        self.config = config
        self.class_names = list(class_names)
        self.progress = progress
        self.started = started
        self.notes = notes
        self.device = resolve_device(config.device)
        self.batch_size = config.batch_size or (256 if self.device.type == "cuda" else 64)
        self.amp_dtype = _amp_dtype(config, self.device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.last_path = self.output_dir / "last.pt" if self.output_dir is not None else None
        self.best_path = self.output_dir / "best.pt" if self.output_dir is not None else None

        seed_everything(config.seed)
        self.normalization = Normalization.of(train_set.images)
        self.loader = BatchLoader(train_set, self.batch_size, self.normalization, config.augmentation, self.device,
                                  seed=config.seed, balanced=config.balanced_sampler)
        self.batch_size = self.loader.batch_size  # smaller when there are fewer faces than a batch
        self.data_fingerprint = _fingerprint(train_set, val_set)
        self.val_set = val_set
        self.model = build_model(config.model, num_classes).to(self.device, memory_format=torch.channels_last)
        weight = None
        if config.class_weights:
            counts = train_set.class_counts(num_classes).double()
            weight = (counts.sum() / (num_classes * counts.clamp(min=1))).float().to(self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
        self.optimizer = _build_optimizer(self.model, config)
        self.requested_steps = config.steps or config.epochs * self.loader.steps_per_epoch
        self.schedule = _Schedule(config.schedule, self.requested_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.global_step = 0
        self.plan_made = False  # the budget has been turned into a step count
        self.plan_locked = config.max_minutes is None  # no (more) planning in this session
        self.best: dict[str, Any] = {"metric": config.select_metric, "value": -1.0}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.images_seen = 0
        self.train_seconds = 0.0
        self.clock = _StepClock(self.device)
        self._pace_start = (0.0, 0)  # (perf_counter, global_step) where the pace is timed from
        self._untimed_seconds = 0.0  # validation time since then, not part of the pace
        self._validation_seconds: float | None = None

    # checkpoints

    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this run."""
        return {"config": self.config.model_dump(mode="json"), "class_names": self.class_names,
                "data": self.data_fingerprint, "batch_size": self.batch_size, "device_type": self.device.type}

    def _classifier_payload(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"format": CLASSIFIER_FORMAT, "model_name": self.config.model, "class_names": self.class_names,
                "label_map": {name: index for index, name in enumerate(self.class_names)},
                "normalization": asdict(self.normalization), "config": self.config.model_dump(mode="json"),
                "val_metrics": metrics, "epoch": self.global_step / self.loader.steps_per_epoch,
                "step": self.global_step, "state_dict": self.model.state_dict()}

    def save(self) -> None:
        """Write ``last.pt``: everything needed to continue exactly from this step."""
        if self.last_path is None:
            return
        self.clock.collect()
        payload = {
            "format": CHECKPOINT_FORMAT, **self._identity(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "global_step": self.global_step, "plan_made": self.plan_made,
            "rng": _rng_state(self.loader.generator), "best": self.best, "history": self.history,
            "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "data_seconds": self.clock.data_seconds, "step_seconds": self.clock.step_seconds,
        }
        _atomic_save(payload, self.last_path)

    def load(self, path: Path) -> None:
        """Continue the run saved in ``path`` (its best model comes from ``best.pt`` beside it)."""
        payload = torch.load(path, map_location=self.device, weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise TrainError(f"{path} is not a fercurate training checkpoint ({CHECKPOINT_FORMAT})",
                             "remove it or train into another folder")
        mine, theirs = self._identity(), {key: payload[key] for key in self._identity()}
        mine["config"] = {k: v for k, v in mine["config"].items() if k not in RESUMABLE_CHANGES}
        theirs["config"] = {k: v for k, v in theirs["config"].items() if k not in RESUMABLE_CHANGES}
        if mine != theirs:
            differing = sorted({*(k for k in mine if k != "config" and mine[k] != theirs[k]),
                                *(f"config.{k}" for k in mine["config"] if mine["config"][k] != theirs["config"].get(k))})
            raise TrainError(f"{path} belongs to another run (differs in {', '.join(differing)})",
                             "resume with the same data and settings, or train into another folder")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.global_step = payload["global_step"]
        self.plan_made = payload["plan_made"]
        self.plan_locked = self.plan_made or self.config.max_minutes is None  # a resumed plan stays
        self.best, self.history = payload["best"], payload["history"]
        self.images_seen, self.train_seconds = payload["images_seen"], payload["train_seconds"]
        self.clock.data_seconds, self.clock.step_seconds = payload["data_seconds"], payload["step_seconds"]
        if self.best_path is not None and self.best_path.exists():
            best = torch.load(self.best_path, map_location=self.device, weights_only=True)
            self.best_state = best["state_dict"]
        _restore_rng_state(payload["rng"], self.loader.generator)

    # training

    @property
    def planned_steps(self) -> int:
        return self.schedule.total_steps

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _over_budget(self) -> bool:
        return self.config.max_minutes is not None and self._elapsed() > self.config.max_minutes * 60

    def _plan_budget(self, session_steps: int) -> None:
        """Fit the schedule to the steps (and validations) left in the budget, from the pace of the
        steps since the last plan: first after the calibration steps, then every few dozen steps,
        so a machine that gets busier or quieter is followed (each re-plan moves the schedule by the
        few percent the pace changed)."""
        assert self.config.max_minutes is not None
        if session_steps == _WARMUP_STEPS:
            self._pace_start, self._untimed_seconds = (time.perf_counter(), self.global_step), 0.0
            return
        since, start_step = self._pace_start
        wanted = _REPLAN_EVERY if self.plan_made else _CALIBRATION_STEPS - _WARMUP_STEPS
        if session_steps < _WARMUP_STEPS or self.global_step - start_step < wanted:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds_per_step = (now - since - self._untimed_seconds) / (self.global_step - start_step)
        seconds_per_validation = self._validation_seconds or (
            len(self.val_set) * seconds_per_step / self.batch_size * _VALIDATION_COST)
        seconds_left = (self.config.max_minutes * 60 - self._elapsed()) * _BUDGET_SAFETY
        self.schedule.total_steps = steps_within_budget(seconds_left, seconds_per_step, seconds_per_validation,
                                                        self.global_step, self.requested_steps,
                                                        self.loader.steps_per_epoch)
        self.plan_made = True
        self._pace_start, self._untimed_seconds = (now, self.global_step), 0.0

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss = self.criterion(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def _validate(self, train_loss: float | None, images_per_s: float) -> None:
        """Score the model on the validation faces, keep it if it is the best so far, checkpoint."""
        began = time.perf_counter()
        probabilities = predict_probabilities(self.model, self.val_set.images, self.normalization,
                                              batch_size=max(256, self.batch_size), device=self.device)
        metrics = metrics_from_probabilities(probabilities, self.val_set.labels.cpu().numpy(), self.class_names)
        entry = {"epoch": round(self.global_step / self.loader.steps_per_epoch, 4), "step": self.global_step,
                 "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                 "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
                 "val_balanced_accuracy": metrics["balanced_accuracy"], "val_ece": metrics["ece"],
                 "images_per_s": images_per_s, "data_wait_share": self.clock.data_share(),
                 "elapsed_s": self._elapsed()}
        self.history.append(entry)
        value = metrics[self.config.select_metric]
        if value > self.best["value"]:
            self.best = {"metric": self.config.select_metric, "value": value, "epoch": entry["epoch"],
                         "step": self.global_step, "metrics": metrics}
            self.best_state = {key: tensor.detach().clone() for key, tensor in self.model.state_dict().items()}
            if self.best_path is not None:
                _atomic_save(self._classifier_payload(metrics), self.best_path)
        self.save()
        self._validation_seconds = time.perf_counter() - began
        self._untimed_seconds += self._validation_seconds
        self._report("validation", loss=train_loss, images_per_s=images_per_s, val_accuracy=metrics["accuracy"],
                     val_macro_f1=metrics["macro_f1"])

    def _report(self, event: Literal["step", "validation"], loss: float | None, images_per_s: float,
                val_accuracy: float | None = None, val_macro_f1: float | None = None) -> None:
        if self.progress is None:
            return
        steps_per_epoch = self.loader.steps_per_epoch
        self.progress(TrainProgress(
            event=event, epoch=max(self.global_step - 1, 0) // steps_per_epoch + 1,
            epochs=math.ceil(self.planned_steps / steps_per_epoch), step=self.global_step,
            steps_total=self.planned_steps, loss=loss, lr=self.optimizer.param_groups[0]["lr"],
            images_per_s=images_per_s, elapsed_s=self._elapsed(), val_accuracy=val_accuracy,
            val_macro_f1=val_macro_f1))

    def fit(self) -> TrainResult:
        steps_per_epoch = self.loader.steps_per_epoch
        session_steps = 0
        self.model.train()
        while self.global_step < self.planned_steps and not self._over_budget():
            epoch, first = divmod(self.global_step, steps_per_epoch)
            loss_total = torch.zeros((), device=self.device)
            loss_steps, reported_total, reported_steps = 0, 0.0, 0
            segment_start, segment_images = time.perf_counter(), 0
            batches = self.loader.epoch(epoch, first)
            while self.global_step < self.planned_steps:
                start = self.clock.mark()
                x, y = next(batches)
                ready = self.clock.mark()
                loss_total += self._train_step(x, y)
                self.clock.add(start, ready, self.clock.mark())
                loss_steps += 1
                segment_images += len(y)
                self.global_step += 1
                session_steps += 1
                if not self.plan_locked:
                    self._plan_budget(session_steps)
                if self.global_step % self.config.log_every == 0:
                    total = float(loss_total)  # one synchronisation per report, not per step
                    if not math.isfinite(total):
                        raise TrainError(f"training diverged at step {self.global_step} (loss {total})",
                                         "lower the learning rate (--lr)")
                    self._report("step", loss=(total - reported_total) / (loss_steps - reported_steps),
                                 images_per_s=segment_images / (time.perf_counter() - segment_start))
                    reported_total, reported_steps = total, loss_steps
                if self.global_step % steps_per_epoch == 0 or self._over_budget():
                    break
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            segment_seconds = time.perf_counter() - segment_start
            self.images_seen += segment_images
            self.train_seconds += segment_seconds
            self._validate(float(loss_total) / loss_steps, segment_images / segment_seconds)
        if not self.history:  # the budget ran out before the first step: still score what there is
            self._validate(None, 0.0)
        return self._result()

    def _result(self) -> TrainResult:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        self.clock.collect()
        return TrainResult(
            model=self.model, model_name=self.config.model, class_names=self.class_names,
            label_map={name: index for index, name in enumerate(self.class_names)},
            normalization=self.normalization, best=self.best, history=self.history, stopped_by="completed" if self.global_step >= self.requested_steps else "time_budget",
            steps=self.global_step, planned_steps=self.planned_steps, requested_steps=self.requested_steps,
            steps_per_epoch=self.loader.steps_per_epoch, batch_size=self.batch_size, device=str(self.device),
            mixed_precision=str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            seconds=self._elapsed(),
            images_per_s=self.images_seen / self.train_seconds if self.train_seconds else 0.0,
            data_wait_share=self.clock.data_share(), checkpoint=self.best_path, notes=self.notes)
