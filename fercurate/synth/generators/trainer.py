"""Training a generator on a workspace's training faces, within a time budget, resumable exactly;
loading a trained one to sample from.

What it does, and why:

- **Training faces only.** A generator learns from the real rows of the training split that
  ``fercurate export`` would write with the same split options (``training_rows``: never
  validation, test or synthetic rows). Their ids are stored with the generator, so ``synthesize``
  can refuse a generator that saw faces a later split puts in validation or test.
- **Balanced batches.** By default every class is drawn equally often, so disgust's few hundred
  faces get as many steps as happiness's thousands (the classes a rebalance fills are the small ones).
- **Time budget.** With ``max_minutes`` the trainer times its first steps, fits the number of steps
  (and so the kind's learning-rate schedule) to the budget, refreshes that plan from the pace
  actually achieved, and stops at once if it still runs over. A resumed run keeps its plan (a larger
  ``steps`` extends it); the budget of the resumed session only bounds it.
- **Exact resume.** ``last.pt`` holds the model's training state, the step, the plan and the two
  random generators (batch drawing on the CPU, the model's noise on its device); on the CPU, N steps
  straight and N/2 + resume + N/2 give the same weights. It is written every ``checkpoint_minutes``,
  at the end, and when the run is interrupted (Ctrl-C).
- **A usable generator at every checkpoint.** ``generator.pt`` (EMA weights, kind, configuration,
  class names, training ids) is rewritten with ``last.pt``; its SHA-1 is the ``checkpoint_sha1`` of
  every face sampled from it. ``samples/step-NNNNNN.png`` shows one row per class (fixed seeds, so
  the grids of successive steps are comparable) every ``sample_every`` steps; ``samples.png`` is the
  latest; ``train.json`` sums the run up.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from fercurate.atomic import atomic_path
from fercurate.compute import autocast_dtype, load_images, resolve_device, seed_everything
from fercurate.errors import OptionError, TrainError
from fercurate.options import validated
from fercurate.schema import CANONICAL_LABELS, face_filepaths
from fercurate.splits import SplitOptions
from fercurate.synth.generators.model import RESUMABLE_CHANGES, GeneratorConfig, GeneratorModel
from fercurate.synth.plan import training_rows
from fercurate.workspace import Workspace

#: Generator kinds: name -> "module:Class" (imported when used: diffusers is slow to import).
GENERATORS: dict[str, str] = {
    "cgan": "fercurate.synth.generators.cgan:CganModel",
    "ddpm": "fercurate.synth.generators.ddpm:DdpmModel",
}
TRAINING_FORMAT = "fercurate-generator-train/1"
GENERATOR_FORMAT = "fercurate-generator/1"
GRID_SEEDS = tuple(range(1_000_000, 1_000_008))  # the faces every sample grid shows, per class
_WARMUP_STEPS = 2
_CALIBRATION_STEPS = 10
_REPLAN_EVERY = 50
_BUDGET_SAFETY = 0.95


def generator_model(kind: str) -> type[GeneratorModel]:
    """The model class of a registered generator kind."""
    if kind not in GENERATORS:
        raise OptionError(f"unknown generator {kind!r}", f"choose from {', '.join(GENERATORS)}")
    module, _, name = GENERATORS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def generator_config(kind: str, **values: Any) -> GeneratorConfig:
    """A validated configuration of ``kind`` (bad values raise :class:`OptionError` naming them)."""
    config_type = generator_model(kind).config_type
    return validated(config_type, f"{kind} option", **{**values, "kind": kind})


@dataclass
class GeneratorProgress:
    """What the progress callback is told every ``log_every`` steps, and once at the end (``done``)."""

    step: int
    steps_total: int
    losses: dict[str, float]
    images_per_s: float
    elapsed_s: float
    done: bool = False


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save(payload: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _write_grid(faces: np.ndarray, rows: int, path: Path, scale: int = 2) -> None:
    """``faces`` (rows * columns, S, S) uint8 as one PNG, ``rows`` rows, each face enlarged ``scale`` times."""
    columns = len(faces) // rows
    side = faces.shape[1] * scale
    big = [cv2.resize(face, (side, side), interpolation=cv2.INTER_NEAREST) for face in faces]
    grid = np.vstack([np.hstack(big[r * columns:(r + 1) * columns]) for r in range(rows)])
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), grid):
            raise OSError(f"could not write {path}")


class _Batches:
    """Training faces on the model's device and the seeded drawing of batches from them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, config: GeneratorConfig,
                 device: torch.device) -> None:
        order = np.argsort(labels, kind="stable")
        self.images = torch.from_numpy(images[order]).to(device)
        self.labels = torch.from_numpy(labels[order]).long().to(device)
        counts = np.bincount(labels, minlength=num_classes)
        self.counts = torch.from_numpy(counts)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self.present = torch.from_numpy(np.flatnonzero(counts))
        self.config = config
        self.device = device
        self.batch_size = config.batch_size or (256 if device.type == "cuda" else 64)
        self.random = torch.Generator().manual_seed(config.seed)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: images in [-1, 1] ``(B, 1, S, S)`` (half mirrored when ``flip``) and labels."""
        size = self.batch_size
        if self.config.balanced_classes:
            classes = self.present[torch.randint(len(self.present), (size,), generator=self.random)]
            within = (torch.rand(size, generator=self.random) * self.counts[classes]).long()
            index = self.offsets[classes] + within
        else:
            index = torch.randint(len(self.images), (size,), generator=self.random)
        flip = torch.rand(size, generator=self.random) < 0.5
        index = index.to(self.device)
        images = self.images[index].float().div(127.5).sub(1).unsqueeze(1)
        if self.config.flip:
            images = torch.where(flip.to(self.device)[:, None, None, None], images.flip(-1), images)
        return images, self.labels[index]


class _Run:
    """One generator training run in ``run_dir``: its state and the loop that advances it."""

    def __init__(self, kind: str, config: GeneratorConfig, rows: pd.DataFrame, workspace: Workspace,
                 run_dir: Path, progress: Callable[[GeneratorProgress], None] | None, started: float) -> None:
        self.kind, self.config, self.run_dir, self.progress, self.started = kind, config, run_dir, progress, started
        self.class_names = [label for label in CANONICAL_LABELS if label in set(rows["label"])]
        self.training_ids = sorted(rows["id"].tolist())
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        labels = rows["label"].map({name: i for i, name in enumerate(self.class_names)}).to_numpy(np.int64)
        images = load_images(workspace.root, face_filepaths(rows), side=config.image_size)
        self.model = generator_model(kind)(config, len(self.class_names), self.device,
                                           autocast_dtype(config.mixed_precision, self.device))
        self.batches = _Batches(images, labels, len(self.class_names), config, self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.step = 0
        self.planned_steps = config.steps
        self.trained_seconds = 0.0  # over all sessions
        self.history: list[dict[str, Any]] = []
        self.session_start_step = 0

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def _identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_names": self.class_names,
                "training_ids_sha1": hashlib.sha1("\n".join(self.training_ids).encode()).hexdigest()}

    def load(self) -> None:
        payload = torch.load(self.last_path, map_location="cpu", weights_only=True)
        if payload.get("format") != TRAINING_FORMAT:
            raise TrainError(f"{self.last_path} is not a fercurate generator checkpoint", "train into another folder")
        saved = payload["config"]
        differing = sorted(key for key, value in self.config.model_dump(mode="json").items()
                           if key not in RESUMABLE_CHANGES and saved.get(key) != value)
        if payload["identity"] != self._identity():
            differing.append("training faces")
        if differing:
            raise TrainError(f"{self.last_path} belongs to another run (differs in {', '.join(differing)})",
                             "resume with the options it was started with, or train into another folder")
        self.model.load_training_state(payload["model"])
        self.step, self.trained_seconds, self.history = payload["step"], payload["trained_seconds"], payload["history"]
        self.planned_steps = payload["planned_steps"] if self.config.steps == saved["steps"] else self.config.steps
        self.session_start_step = self.step
        self.batches.random.set_state(payload["batch_random"])
        self.noise.set_state(payload["noise_random"])
        torch.set_rng_state(payload["torch_random"])

    def save(self, session_seconds: float) -> None:
        """``last.pt`` and ``generator.pt`` (atomically: a kill leaves the previous pair usable)."""
        config = self.config.model_dump(mode="json")
        _save({"format": TRAINING_FORMAT, "config": config, "identity": self._identity(),
               "model": self.model.training_state(), "step": self.step, "planned_steps": self.planned_steps,
               "trained_seconds": self.trained_seconds + session_seconds, "history": self.history,
               "batch_random": self.batches.random.get_state(), "noise_random": self.noise.get_state().cpu(),
               "torch_random": torch.get_rng_state()}, self.last_path)
        _save({"format": GENERATOR_FORMAT, "kind": self.kind, "config": config, "class_names": self.class_names,
               "training_ids": self.training_ids, "step": self.step, "model": self.model.inference_state()},
              self.run_dir / "generator.pt")

    def write_grid(self) -> None:
        labels = torch.arange(len(self.class_names)).repeat_interleave(len(GRID_SEEDS))
        faces = self.model.sample(labels, list(GRID_SEEDS) * len(self.class_names)).numpy()
        path = self.run_dir / "samples" / f"step-{self.step:06d}.png"
        _write_grid(faces, len(self.class_names), path)
        _write_grid(faces, len(self.class_names), self.run_dir / "samples.png")

    def _budget_left(self) -> float:
        if self.config.max_minutes is None:
            return float("inf")
        return self.config.max_minutes * 60 - (time.monotonic() - self.started)

    def fit(self) -> dict[str, Any]:
        session_begun = time.monotonic()
        timed_from: tuple[float, int] | None = None
        last_checkpoint = time.monotonic()
        running: dict[str, list[float]] = {}
        window = (time.monotonic(), self.step)
        replanned = self.session_start_step > 0  # a resumed run keeps its plan (or a larger --steps); the budget only stops it
        try:
            while self.step < self.planned_steps and self._budget_left() > 0:
                images, labels = self.batches.draw()
                factor = self.model.learning_rate_factor(self.step, self.planned_steps)
                losses = self.model.train_step(images, labels, self.noise, factor)
                self.step += 1
                for name, value in losses.items():
                    if not np.isfinite(value):
                        raise TrainError(f"the {self.kind} diverged at step {self.step} ({name} = {value})",
                                         "lower the learning rate or turn mixed precision off (--no-mixed-precision)")
                    running.setdefault(name, []).append(value)
                done_in_session = self.step - self.session_start_step
                if done_in_session == _WARMUP_STEPS:
                    timed_from = (time.monotonic(), self.step)
                if (timed_from is not None and self.config.max_minutes is not None and not replanned
                        and (self.step - timed_from[1]) % _REPLAN_EVERY == _CALIBRATION_STEPS % _REPLAN_EVERY
                        and self.step - timed_from[1] >= _CALIBRATION_STEPS):
                    pace = (time.monotonic() - timed_from[0]) / (self.step - timed_from[1])
                    pace *= 1 + len(self.class_names) * len(GRID_SEEDS) / (self.config.sample_every
                                                                           * self.batches.batch_size)
                    fit = self.step + int(self._budget_left() * _BUDGET_SAFETY / pace)
                    self.planned_steps = max(self.step + 1, min(self.config.steps, fit))
                if self.step % self.config.log_every == 0 or self.step >= self.planned_steps:
                    means = {name: float(np.mean(values)) for name, values in running.items()}
                    now = time.monotonic()
                    rate = (self.step - window[1]) * self.batches.batch_size / max(now - window[0], 1e-9)
                    self.history.append({"step": self.step, **{k: round(v, 5) for k, v in means.items()}})
                    running, window = {}, (now, self.step)
                    if self.progress is not None:
                        self.progress(GeneratorProgress(self.step, self.planned_steps, means, rate,
                                                        now - self.started))
                if self.step % self.config.sample_every == 0:
                    self.write_grid()
                if time.monotonic() - last_checkpoint > self.config.checkpoint_minutes * 60:
                    self.save(time.monotonic() - session_begun)
                    last_checkpoint = time.monotonic()
        except KeyboardInterrupt:
            self.save(time.monotonic() - session_begun)
            raise
        session_seconds = time.monotonic() - session_begun
        self.write_grid()
        self.save(session_seconds)
        self.trained_seconds += session_seconds
        summary = {"kind": self.kind, "config": self.config.model_dump(mode="json"), "class_names": self.class_names,
                   "training_faces": len(self.training_ids),
                   "training_faces_per_class": dict(zip(self.class_names, self.batches.counts.tolist())),
                   "parameters": self.model.parameter_counts(), "device": str(self.device),
                   "autocast": str(self.model.autocast).replace("torch.", "") if self.model.autocast else "float32",
                   "step": self.step, "planned_steps": self.planned_steps,
                   "session_steps": self.step - self.session_start_step,
                   "session_seconds": round(session_seconds, 1), "trained_seconds": round(self.trained_seconds, 1),
                   "steps_per_s": round((self.step - self.session_start_step) / max(session_seconds, 1e-9), 3),
                   "finished": self.step >= self.planned_steps,
                   "checkpoint_sha1": _sha1(self.run_dir / "generator.pt"),
                   "losses": self.history[-1] if self.history else {}, "history": self.history[::max(1, len(self.history) // 200)]}
        with atomic_path(self.run_dir / "train.json") as temporary:
            temporary.write_text(json.dumps(summary, indent=2))
        if self.progress is not None:
            self.progress(GeneratorProgress(self.step, self.planned_steps, summary["losses"], 0.0,
                                            time.monotonic() - self.started, done=True))
        return summary


def train_generator(workspace: Workspace, run_dir: str | Path, config: GeneratorConfig, *,
                    split: SplitOptions | None = None, sources: Sequence[str] | None = None, resume: bool = False,
                    progress: Callable[[GeneratorProgress], None] | None = None) -> dict[str, Any]:
    """Train ``config.kind`` on the workspace's real training faces (of ``sources`` only, when given)
    into ``run_dir`` (see the module docstring) and return the run's summary (also in
    ``run_dir/train.json``). An existing ``last.pt`` is continued with ``resume`` and refused without it."""
    started = time.monotonic()
    workspace.require()
    resolve_device(config.device)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"the run folder {run_dir} is a file", "give a folder for the generator's files")
    if (run_dir / "last.pt").exists() and not resume:
        raise TrainError(f"{run_dir / 'last.pt'} exists (an earlier run)",
                         "pass --resume to continue it, or train into another folder")
    rows = training_rows(workspace, split or SplitOptions())
    if sources:
        unknown = sorted(set(sources) - set(rows["source"]))
        if unknown:
            raise OptionError(f"--source {', '.join(unknown)}: no training faces of that source in {workspace.root}",
                              f"choose from {', '.join(sorted(set(rows['source'])))}")
        rows = rows[rows["source"].isin(list(sources))].reset_index(drop=True)
    if rows.empty:
        raise TrainError(f"{workspace.root} has no real training faces to learn from",
                         "ingest a dataset first (fercurate ingest)")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(config.kind, config, rows, workspace, run_dir, progress, started)
    if resume and run.last_path.exists():
        run.load()
    return run.fit()


@dataclass
class TrainedGenerator:
    """A trained generator loaded for sampling (see :func:`load_generator`)."""

    kind: str
    model: GeneratorModel
    class_names: list[str]
    config: GeneratorConfig
    training_ids: list[str]
    step: int
    checkpoint_sha1: str
    path: Path

    def sample(self, label: str, seeds: Sequence[int], *, guidance: float | None = None,
               steps: int | None = None) -> np.ndarray:
        """uint8 faces ``(len(seeds), S, S)`` of ``label``, face i from ``seeds[i]`` alone."""
        if label not in self.class_names:
            raise OptionError(f"the {self.kind} generator {self.path} has no class {label!r}",
                              f"it knows {', '.join(self.class_names)}")
        labels = torch.full((len(seeds),), self.class_names.index(label), dtype=torch.long)
        return self.model.sample(labels, list(seeds), guidance=guidance, steps=steps).numpy()

    def describe(self) -> dict[str, Any]:
        """Where it is, what it is, and its quality report (``quality.json`` beside it) when one was made."""
        quality = self.path.parent / "quality.json"
        return {"kind": self.kind, "run": str(self.path.parent), "checkpoint_sha1": self.checkpoint_sha1,
                "step": self.step, "class_names": self.class_names, "training_faces": len(self.training_ids),
                "quality": json.loads(quality.read_text()) if quality.is_file() else None}


def _generator_file(path: str | Path) -> dict[str, Any]:
    """The payload of the generator in ``path`` (a run folder or its ``generator.pt``), checked."""
    path = Path(path)
    file = path / "generator.pt" if path.is_dir() else path
    if not file.is_file():
        raise OptionError(f"no trained generator at {path}",
                          "give the folder of a `fercurate generator train` run (it holds generator.pt)")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != GENERATOR_FORMAT:
        raise OptionError(f"{file} is not a fercurate generator", "give the folder of a `fercurate generator train` run")
    return {**payload, "file": file}


def generator_kind(path: str | Path) -> str:
    """The kind (``cgan``, ``ddpm``) of the generator in ``path``."""
    return _generator_file(path)["kind"]


def load_generator(path: str | Path, *, device: str = "auto") -> TrainedGenerator:
    """The generator in ``path`` (a run folder or its ``generator.pt``), in eval mode on ``device``."""
    payload = _generator_file(path)
    file, kind = payload["file"], payload["kind"]
    config = generator_config(kind, **{k: v for k, v in payload["config"].items() if k != "kind"})
    config = config.model_copy(update={"device": device})
    torch_device = resolve_device(device)
    model = generator_model(kind)(config, len(payload["class_names"]), torch_device,
                                  autocast_dtype(config.mixed_precision, torch_device))
    model.load_inference_state(payload["model"])
    return TrainedGenerator(kind, model, payload["class_names"], config, payload["training_ids"], payload["step"],
                            _sha1(file), file)



def write_samples(generator: TrainedGenerator, out: str | Path, *, per_class: int, labels: Sequence[str] | None = None,
                  first_seed: int = 0, guidance: float | None = None, steps: int | None = None) -> dict[str, Any]:
    """``per_class`` faces of each of ``labels`` (default: all the generator knows) as
    ``out/<label>/<seed>.png`` (face i from seed ``first_seed + i``), and ``out/grid.png`` with one row
    per class (at most 16 faces each). Files are written atomically; a re-run rewrites the same faces."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file", "give a folder for the faces")
    chosen = list(labels or generator.class_names)
    seeds = list(range(first_seed, first_seed + per_class))
    rows = []
    for label in chosen:
        faces = generator.sample(label, seeds, guidance=guidance, steps=steps)
        for seed, face in zip(seeds, faces):
            with atomic_path(out / label / f"{seed}.png") as temporary:
                if not cv2.imwrite(str(temporary), face):
                    raise OSError(f"could not write {out / label / f'{seed}.png'}")
        rows.append(faces[:16])
    _write_grid(np.concatenate(rows), len(chosen), out / "grid.png")
    return {"per_class": {label: per_class for label in chosen}, "grid": str(out / "grid.png"), "seeds": seeds}
