"""Out-of-fold class probabilities from a small CNN, for confident learning on face images.

cleanlab finds mislabelled faces only as well as the model whose probabilities it reads. On
FER2013 a HOG + MLP model is 52% accurate and its 1,000 most doubted labels are disputed by the
FER+ crowd 62% of the time; this CNN (135k parameters: four 3x3 convolution stages, 16 to 128
channels, global pooling) reaches about 60% after six epochs and lifts that to over 75%.

Invariants:
- every face's probabilities come from a model that never saw it (stratified folds), as cleanlab
  requires;
- the run fits the time budget: each fold gets an equal share, and its step plan (a cosine
  learning-rate schedule over the planned steps) is shortened while it runs when the measured
  speed says the share would be exceeded, so a budget cut still ends on a finished schedule;
- the same seed gives the same probabilities on the same device and thread count.

The model is defined here rather than borrowed from :mod:`fercurate.train` because the audit runs
before training in fercurate's data flow and imports nothing from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from torch import nn

from fercurate.compute import autocast_dtype, resolve_device, seed_everything

#: Passes over each fold's training faces when the budget allows.
DEFAULT_EPOCHS = 6
BATCH_SIZE = 128
_SHIFT = 4  # pixels of random translation (replicate-padded) in training
#: Steps each fold trains at least (budget permitting): a few hundred faces are many epochs.
MIN_STEPS = 150
_REPLAN_EVERY = 20  # steps between speed measurements
_LEARNING_RATE = 4e-3


def _stage(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


class NoiseCnn(nn.Module):
    """A small CNN for 48x48 gray faces: 48 -> 24 -> 12 -> 6 pixels, then global average pooling."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *_stage(1, width), nn.MaxPool2d(2),
            *_stage(width, 2 * width), nn.MaxPool2d(2),
            *_stage(2 * width, 4 * width), *_stage(4 * width, 4 * width), nn.MaxPool2d(2),
            *_stage(4 * width, 8 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 faces (N, 48, 48) to float (N, 1, 48, 48) around zero."""
    return (images.float().unsqueeze(1) / 255.0 - 0.5) / 0.25


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half the faces and shift the batch by up to a few pixels (one shift per batch)."""
    mirrored = torch.rand(len(batch), generator=generator, device=batch.device) < 0.5
    batch = torch.where(mirrored[:, None, None, None], batch.flip(3), batch)
    side = batch.shape[-1]
    dx, dy = torch.randint(0, 2 * _SHIFT + 1, (2,), generator=generator, device=batch.device).tolist()
    padded = F.pad(batch, (_SHIFT,) * 4, mode="replicate")
    return padded[:, :, dy:dy + side, dx:dx + side]


def _batch_size(faces: int) -> int:
    """BATCH_SIZE, or an eighth of the faces (at least 16) when there are few."""
    return min(BATCH_SIZE, max(16, faces // 8))


def _planned_steps(faces: int, epochs: int) -> int:
    """Steps a fold of ``faces`` training faces plans before any budget cut."""
    return max(MIN_STEPS, epochs * max(1, faces // _batch_size(faces)))


def _schedule(step: int, planned: int) -> float:
    """The learning rate's share at ``step`` of ``planned``: a linear warm-up over the first 5%, then a
    cosine to zero; re-planning shortens the cosine from where it is."""
    warm = max(1, planned // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, planned - warm)))


def _train_fold(images: torch.Tensor, targets: torch.Tensor, num_classes: int, *, epochs: int, deadline: float,
                seed: int, device: torch.device, on_step: Callable[[], None]) -> NoiseCnn:
    """Train one fold's model until its planned steps are done, re-planning to meet ``deadline``."""
    seed_everything(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = NoiseCnn(num_classes).to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=5e-4)
    dtype = autocast_dtype(True, device)
    batch_size = _batch_size(len(targets))
    per_epoch = max(1, len(targets) // batch_size)
    planned = _planned_steps(len(targets), epochs)
    step, started = 0, time.perf_counter()
    model.train()
    while step < planned:
        order = torch.randperm(len(targets), generator=generator, device=device)
        for start in range(0, per_epoch * batch_size, batch_size):
            if step >= planned:
                break
            for group in optimiser.param_groups:
                group["lr"] = _LEARNING_RATE * _schedule(step, planned)
            index = order[start:start + batch_size]
            batch = _augment(images[index], generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(batch), targets[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            on_step()
            if step % _REPLAN_EVERY == 0:
                seconds_per_step = (time.perf_counter() - started) / step
                affordable = step + int((deadline - time.perf_counter()) / seconds_per_step)
                planned = max(step, min(planned, affordable))
    return model


@torch.no_grad()
def _predict(model: NoiseCnn, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Class probabilities, averaged over each face and its mirror image."""
    model.eval()
    dtype = autocast_dtype(True, device)
    out = []
    for start in range(0, len(images), 1024):
        batch = images[start:start + 1024].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            direct = model(batch).float().softmax(1)
            mirrored = model(batch.flip(3)).float().softmax(1)
        out.append(((direct + mirrored) / 2).cpu())
    return torch.cat(out).double().numpy()


def cnn_out_of_fold_probabilities(
    thumbnails: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    max_minutes: float = 15.0,
    epochs: int = DEFAULT_EPOCHS,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Per face, the class probabilities of a CNN trained on the other ``folds - 1`` folds.

    ``thumbnails`` are uint8 (N, 48, 48) faces and ``targets`` their class indices (every class
    needs at least ``folds`` faces). The run takes at most about ``max_minutes`` plus prediction
    time; ``progress(done, total)`` is called per training step with the planned total.
    """
    torch_device = resolve_device(device)
    images = _normalise(torch.from_numpy(np.ascontiguousarray(thumbnails))).to(torch_device)
    labels = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(torch_device)
    probabilities = np.zeros((len(targets), num_classes))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    total = folds * _planned_steps(len(targets) * (folds - 1) // folds, epochs)
    done = 0

    def on_step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    for fold, (train, held_out) in enumerate(splitter.split(np.zeros(len(targets)), targets)):
        deadline = started + max_minutes * 60 * (fold + 1) / folds
        model = _train_fold(images[train], labels[train], num_classes, epochs=epochs, deadline=deadline,
                            seed=seed + fold, device=torch_device, on_step=on_step)
        probabilities[held_out] = _predict(model, images[held_out], torch_device)
    return probabilities
