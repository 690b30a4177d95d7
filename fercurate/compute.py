"""Where tensors live and how workspace images become arrays: shared by the classifier's trainer
(:mod:`fercurate.train`) and the generators (:mod:`fercurate.synth.generators`), so neither imports
the other.

FER images are tiny (48x48 gray, 2.3 KB), so a whole dataset fits in memory many times over:
FER2013's 35,887 faces are 83 MB as uint8. :func:`load_images` therefore decodes every image once
(in threads: OpenCV releases the GIL) into one array.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from fercurate.errors import TrainError, WorkspaceError
from fercurate.options import parse_device

SIDE = 48


def _read_gray(path: str, side: int) -> np.ndarray | None:
    """One image as gray uint8 (side, side): colour converted by OpenCV, other sizes shrunk (or
    grown) with INTER_AREA; None when it cannot be read."""
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None or image.shape == (side, side):
        return image
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def load_images(root: str | Path, filepaths: Sequence[str], workers: int | None = None, *,
                side: int = SIDE) -> np.ndarray:
    """Decode the images at ``root / filepath`` into one uint8 array ``(N, side, side)``, in order.

    Images that are not ``side`` x ``side`` gray (CK+, JAFFE, image folders) are converted to gray
    and resized with ``cv2.INTER_AREA`` (whole frame, aspect ratio not kept). A missing or
    unreadable file is an error, not a silent gap: the message counts them and names the first.
    """
    paths = [os.path.join(root, path) for path in filepaths]
    images = np.empty((len(paths), side, side), dtype=np.uint8)
    unreadable: list[str] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for index, (path, image) in enumerate(zip(paths, pool.map(partial(_read_gray, side=side), paths,
                                                                  chunksize=256))):
            if image is None:
                unreadable.append(path)
            else:
                images[index] = image
    if unreadable:
        raise WorkspaceError(f"{len(unreadable)} image(s) missing or unreadable, first: {unreadable[0]}",
                             "the workspace is incomplete: re-run the ingest of their source to restore them")
    return images


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU; anything else as given
    (see :func:`~fercurate.options.parse_device`), refused with :class:`TrainError` when this
    machine has no such CUDA device, before any data is loaded."""
    name = parse_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= available:
            raise TrainError(f"--device {name} asks for a CUDA GPU, but this machine has "
                             + (f"only {available}" if available else "none (or PyTorch was built without CUDA)"),
                             "use --device cpu, or auto to take a GPU only where there is one")
    return device


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype when mixed precision is ``enabled`` (None: float32): bfloat16 where the
    device has it (no loss scaling needed; also faster on these CPUs), float16 on older GPUs."""
    if not enabled:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
