"""Training data: workspace rows in memory, and a batched augmentation pipeline on the training device.

FER images are tiny (48x48 gray, 2.3 KB), so a whole dataset fits in memory many times over:
FER2013's 35,887 faces are 83 MB as uint8. :func:`load_images` therefore decodes every image once
(in threads: OpenCV releases the GIL), and :class:`BatchLoader` keeps the array on the training
device and builds each batch with tensor ops there: gather by index, scale, normalise, then augment
the whole batch at once (flip and affine in one ``grid_sample``, random erasing by masks). There is
no per-image Python work in the training loop, so the pipeline stays far ahead of the model on CPU
and on GPU alike; the training loop measures what share of step time it takes anyway.

Augmentation (the usual FER recipe): horizontal flip, small affine (rotation +-10 degrees, scale
0.9-1.1, translation +-10%), random erasing. Randomness comes from seeded generators whose state is
saved in checkpoints, so a resumed run draws exactly the batches and augmentations it would have.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator
from torch.utils.data import Dataset

from fercurate.compute import SIDE, load_images
from fercurate.export import ExportOptions, plan_export
from fercurate.schema import CANONICAL_LABELS, LABEL_INDEX, face_filepaths
from fercurate.splits import SPLITS
from fercurate.workspace import Workspace

def workspace_splits(workspace: Workspace, options: ExportOptions | None = None) -> dict[str, pd.DataFrame]:
    """The workspace's rows per curated split (``train``, ``validation``, ``test``), exactly as
    ``fercurate export`` would split them: leakage-free, with the same options (strategy, balance,
    sources, excluded flags)."""
    rows = plan_export(workspace, options or ExportOptions())[0]
    return {name: rows[rows["split"] == name].reset_index(drop=True) for name in SPLITS}


def build_label_map(labels: Iterable[str]) -> dict[str, int]:
    """Class index of each canonical label present in ``labels``, in canonical order (so the same
    classes always get the same indices, whatever order the rows come in)."""
    present = set(labels)
    unknown = present - set(CANONICAL_LABELS)
    if unknown:
        raise ValueError(f"labels outside the canonical set: {sorted(unknown)}")
    ordered = sorted(present, key=LABEL_INDEX.__getitem__)
    return {label: index for index, label in enumerate(ordered)}


@dataclass(frozen=True)
class Normalization:
    """Pixel statistics of the training images (on the 0..1 scale) that every input is normalised
    with; recorded in checkpoints and ONNX metadata, since inference must use the same ones."""

    mean: float
    std: float

    @classmethod
    def of(cls, images: np.ndarray | torch.Tensor) -> Normalization:
        """Mean and standard deviation of uint8 ``images`` (computed in float64)."""
        values = torch.as_tensor(images).double() / 255.0
        return cls(float(values.mean()), float(values.std()))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 48, 48)`` -> normalised float ``(N, 1, 48, 48)`` on the same device."""
        return ((images.float() / 255.0 - self.mean) / self.std).unsqueeze(1)


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Faces held in memory: uint8 images ``(N, 48, 48)``, class indices ``(N,)`` and row ids.

    Per-item access (``dataset[i]`` -> uint8 ``(1, 48, 48)`` tensor, class index) serves any
    PyTorch code; fercurate's training loop uses :class:`BatchLoader` instead, which never leaves
    tensor land.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 ids: Sequence[str] | None = None) -> None:
        self.images = torch.as_tensor(images, dtype=torch.uint8)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.images.ndim != 3 or self.images.shape[1:] != (SIDE, SIDE):
            raise ValueError(f"images must be (N, {SIDE}, {SIDE}) uint8, got {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.images))]

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, root: str | Path, label_map: dict[str, int],
                  workers: int | None = None) -> FaceDataset:
        """Load the rows' images (columns ``id``, ``filepath``, ``label``) from the workspace at
        ``root``. Every row's label must be in ``label_map`` (see :func:`rows_in_classes`)."""
        missing = set(rows["label"]) - set(label_map)
        if missing:
            raise ValueError(f"rows with labels outside the label map: {sorted(missing)}")
        labels = np.array(rows["label"].map(label_map), dtype=np.int64)
        return cls(load_images(root, face_filepaths(rows), workers), labels, rows["id"].tolist())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].unsqueeze(0), int(self.labels[index])

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Number of faces of each class."""
        return torch.bincount(self.labels.cpu(), minlength=num_classes)


def rows_in_classes(rows: pd.DataFrame, label_map: dict[str, int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows whose label is one of the model's classes, and how many of each other label were
    left out (e.g. contempt in a validation split when no training face shows it)."""
    known = rows["label"].isin(list(label_map))
    left_out = rows.loc[~known, "label"].value_counts().to_dict()
    return rows[known].reset_index(drop=True), {str(k): int(v) for k, v in left_out.items()}


class Augmentation(BaseModel):
    """Training-time augmentation; probabilities per image, ranges sampled uniformly."""

    enabled: bool = True
    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    rotation: float = Field(10.0, ge=0, le=180, description="max rotation, degrees either way")
    scale: tuple[float, float] = Field((0.9, 1.1), description="zoom range")
    translation: float = Field(0.1, ge=0, le=0.5, description="max shift, as a share of the side, per axis")
    erasing: float = Field(0.5, ge=0, le=1, description="probability of erasing one rectangle")
    erasing_area: tuple[float, float] = Field((0.02, 0.33), description="erased share of the image")
    erasing_ratio: tuple[float, float] = Field((0.3, 3.3), description="aspect ratio range of the erased rectangle")

    @field_validator("scale", "erasing_area", "erasing_ratio")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high or not math.isfinite(high):
            raise ValueError(f"a range (low, high) needs 0 < low <= high, got {value}")
        return value

    @field_validator("erasing_area")
    @classmethod
    def _area_share(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"the erased share of the image cannot exceed 1, got {value}")
        return value


def augment_batch(x: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Augment a normalised batch ``(N, 1, H, W)`` in a few batched kernels on its own device.

    Flip, rotation, scale and translation form one affine map per image, applied by a single
    ``grid_sample`` (bilinear); pixels shifted in from outside become 0, the training mean after
    normalisation. Random erasing sets one rectangle per chosen image to 0 as well (as torchvision's
    ``RandomErasing`` with ``value=0``). All random numbers are drawn from ``generator``.
    """
    if not augmentation.enabled:
        return x
    n, _, height, width = x.shape
    device = x.device
    u = torch.rand((n, 10), generator=generator, device=device)
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * augmentation.rotation)
    low, high = augmentation.scale
    scale = low + u[:, 1] * (high - low)
    shift = (u[:, 2:4] * 2 - 1) * (2 * augmentation.translation)  # normalised coordinates span 2
    flip = torch.where(u[:, 4] < augmentation.flip, -1.0, 1.0)
    # affine_grid maps output to input coordinates: input = A (F out - t), A = R(-angle) / scale.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    a = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (n, 2, 2)
    offset = -(a @ shift.unsqueeze(2))
    a = a * torch.stack([flip, torch.ones_like(flip)], 1).unsqueeze(1)  # flip x of the output
    theta = torch.cat([a, offset], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if augmentation.erasing > 0:
        area_low, area_high = augmentation.erasing_area
        area = (area_low + u[:, 5] * (area_high - area_low)) * height * width
        log_low, log_high = math.log(augmentation.erasing_ratio[0]), math.log(augmentation.erasing_ratio[1])
        ratio = torch.exp(log_low + u[:, 6] * (log_high - log_low))
        box_h = torch.sqrt(area * ratio).round().clamp(1, height)
        box_w = torch.sqrt(area / ratio).round().clamp(1, width)
        top = (u[:, 7] * (height - box_h + 1)).floor()
        left = (u[:, 8] * (width - box_w + 1)).floor()
        erase = u[:, 9] < augmentation.erasing
        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1)))
        x = x.masked_fill((inside & erase.view(n, 1, 1)).unsqueeze(1), 0.0)
    return x


class BatchLoader:
    """Training batches from a :class:`FaceDataset` held on ``device``.

    Epoch ``e`` visits the faces in an order drawn from ``(seed, e)`` alone: a permutation, or with
    ``balanced`` a draw with replacement where every class is equally likely (same epoch length).
    The last incomplete batch is dropped (BatchNorm dislikes tiny batches). Augmentations come
    from :attr:`generator`, whose state a checkpoint saves.
    """

    def __init__(self, dataset: FaceDataset, batch_size: int, normalization: Normalization,
                 augmentation: Augmentation, device: torch.device, seed: int = 0, balanced: bool = False) -> None:
        if len(dataset) < 1:
            raise ValueError("no training faces")
        self.batch_size = min(batch_size, len(dataset))
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.normalization = normalization
        self.augmentation = augmentation
        self.device = device
        self.seed = seed
        self.balanced = balanced
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        labels = dataset.labels.numpy()
        counts = np.bincount(labels)
        self._weights = 1.0 / counts[labels]
        self._weights /= self._weights.sum()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the faces epoch ``epoch`` visits, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.balanced:
            return rng.choice(len(self._weights), size=len(self._weights), p=self._weights)
        return rng.permutation(len(self._weights))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented, normalised batches ``(x, y)`` of epoch ``epoch`` from step ``start_step`` on."""
        order = torch.from_numpy(self.order(epoch)).to(self.device)
        for step in range(start_step, self.steps_per_epoch):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.normalization.apply(self.images[index])
            yield augment_batch(x, self.augmentation, self.generator), self.labels[index]
