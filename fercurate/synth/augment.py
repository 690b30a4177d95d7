"""Running the occlusion pipelines over many faces, deterministically, and the contact sheet.

Face ``i`` is made by the pipeline of its occluder reseeded with its own seed
(``Compose.set_random_seed``), so a face depends only on (parent pixels, landmarks, occluder, seed,
preset): the same inputs give the same pixels in any order, batch or process. One ``A.Compose`` per
occluder and process is built once and reused (about 0.8 ms per 48x48 face on one core, reseeding
included); large batches run in a process pool, one worker per CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np

from fercurate.atomic import atomic_path
from fercurate.synth.occluders import OCCLUDERS, occlusion_pipeline, placement_for

Strength = Literal["light", "default"]
_CHUNK = 2048  # faces per task of the process pool


def face_seed(seed: int, namespace: str, parent_id: str, variant: int) -> int:
    """The seed of one derived face: a function of the run's seed, a namespace (``augment`` for
    training faces, ``occluded-test`` for test copies, so the two never share seeds), the parent and
    the variant number. Fits in 31 bits."""
    state = np.random.SeedSequence([seed, zlib.crc32(namespace.encode()), zlib.crc32(parent_id.encode()), variant])
    return int(state.generate_state(1)[0] >> 1)


def _augment_chunk(images: Sequence[np.ndarray], occluders: Sequence[str], seeds: Sequence[int],
                   landmarks: Sequence[np.ndarray | None], strength: Strength) -> list[np.ndarray]:
    pipelines: dict[str, A.Compose] = {}
    faces = []
    for image, occluder, seed, points in zip(images, occluders, seeds, landmarks, strict=True):
        pipeline = pipelines.get(occluder)
        if pipeline is None:
            pipeline = pipelines[occluder] = occlusion_pipeline(occluder, seed=seed, strength=strength)
        pipeline.set_random_seed(seed)
        faces.append(pipeline(image=image, face_landmarks=points)["image"])
    return faces


def augment_faces(images: Sequence[np.ndarray], occluders: Sequence[str], seeds: Sequence[int], *,
                  landmarks: Sequence[np.ndarray | None] | None = None, strength: Strength = "default",
                  workers: int | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Each image through its occluder's pipeline with its seed; returns the faces and the
    placement used for each (``landmarks``, ``detected`` or ``canonical``: see
    :func:`~fercurate.synth.occluders.placement_for`). Large batches are shared among
    ``workers`` processes (default: one per CPU); faces do not depend on how they are shared."""
    images, occluders, seeds = list(images), list(occluders), list(seeds)
    count = len(images)
    points = list(landmarks) if landmarks is not None else [None] * count
    placements: list[str] = [placement_for(p) for p in points]
    workers = workers or min(os.cpu_count() or 1, -(-count // _CHUNK))
    chunks = [slice(start, start + _CHUNK) for start in range(0, count, _CHUNK)]
    faces: list[np.ndarray] = []
    if workers <= 1:
        for chunk in chunks:
            done = _augment_chunk(images[chunk], occluders[chunk], seeds[chunk], points[chunk], strength)
            faces += done
            if progress is not None:
                progress(len(done))
        return faces, placements
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_augment_chunk, images[c], occluders[c], seeds[c], points[c], strength) for c in chunks]
        for future in futures:  # in order: faces line up with their jobs
            done = future.result()
            faces += done
            if progress is not None:
                progress(len(done))
    return faces, placements


def contact_sheet(faces: Sequence[np.ndarray], path: str | Path, *, occluders: Sequence[str] | None = None,
                  seed: int = 0, size: int = 96, landmarks: Sequence[np.ndarray | None] | None = None) -> Path:
    """A PNG grid: the first row holds the faces as they are, then one row per occluder applied to
    each of them (with the ``light`` photometric preset). Returns the path written (atomically)."""
    names = list(occluders or OCCLUDERS)
    rows = [list(faces)]
    for name in names:
        rows.append(augment_faces(faces, [name] * len(faces), [seed + j for j in range(len(faces))],
                                  landmarks=landmarks, strength="light")[0])

    def tile(image: np.ndarray) -> np.ndarray:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)
    grid = np.vstack([np.hstack([tile(face) for face in row]) for row in rows])
    path = Path(path)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), grid):  # the temporary name keeps the .png suffix
            raise OSError(f"could not write {path}")
    return path
