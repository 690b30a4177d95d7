"""How often dlib's HOG detector (fercurate.audit.faces) finds a face, and how fast, on real data.

    .venv/bin/python benchmarks/face_landmarks_benchmark.py [--data ../shared/data] [--sample 2000] [--full]

On the first ``--sample`` faces of FER2013's image-folder release (in the tarball's order) it prints
the detection rate at several thresholds (one run at the lowest: a face found at threshold t is one
whose best score is >= t), the rate on the same faces upside down (a proxy for false faces), ms/face
in one process, and the miss rate of the Haar cascade the quality step uses by default. With
``--full`` it times all 35,887 faces with a process pool (what ``audit --landmarks`` costs). Then the
JAFFE (256x256) and CK+48 samples. Real data is read where it lies; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np

from fercurate.audit import faces
from fercurate.audit.quality import QualityThresholds, _detector, _has_face

THRESHOLDS = (0.0, -0.3, -0.45, -0.6)


def fer2013_faces(data: Path, limit: int | None) -> list[np.ndarray]:
    images = []
    with tarfile.open(data / "fer2013" / "fer2013-images.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                raw = np.frombuffer(archive.extractfile(member).read(), np.uint8)  # type: ignore[union-attr]
                images.append(cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE))
                if limit is not None and len(images) >= limit:
                    break
    return images


def timed(images: list[np.ndarray], **options: object) -> tuple[faces.FaceLandmarks, float]:
    start = time.perf_counter()
    result = faces.find_faces(images, **options)  # type: ignore[arg-type]
    return result, time.perf_counter() - start


def rates(result: faces.FaceLandmarks) -> str:
    return ", ".join(f"{threshold:+.2f}: {100 * np.mean(result.score >= threshold):.1f}%" for threshold in THRESHOLDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--full", action="store_true", help="also time all of FER2013 with a process pool")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; dlib HOG + 5-point predictor from {faces.shape_predictor_path()}")

    sample = fer2013_faces(args.data, args.sample)
    lowest = min(THRESHOLDS)
    result, seconds = timed(sample, threshold=lowest, workers=1)
    print(f"FER2013 first {len(sample)}: found at threshold {rates(result)}; "
          f"{1000 * seconds / len(sample):.2f} ms/face (1 process, threshold {lowest})")
    chosen, _ = timed(sample, workers=1)
    print(f"  default threshold {faces.DEFAULT_THRESHOLD}: {100 * chosen.found.mean():.1f}% found; "
          f"eye centres (median x, y): left {np.nanmedian(chosen.landmarks[:, 2:4].mean(1), 0).round(1).tolist()}, "
          f"right {np.nanmedian(chosen.landmarks[:, 0:2].mean(1), 0).round(1).tolist()}, "
          f"nose {np.nanmedian(chosen.landmarks[:, 4], 0).round(1).tolist()}")
    flipped, _ = timed([image[::-1] for image in sample], threshold=lowest, workers=1)
    print(f"  upside down (false faces): {rates(flipped)}")
    cascade, start = _detector(), time.perf_counter()
    haar = np.array([_has_face(cascade, image, QualityThresholds().face_min_neighbors) for image in sample])
    print(f"  Haar cascade as quality.py runs it: {100 * haar.mean():.1f}% found "
          f"({1000 * (time.perf_counter() - start) / len(sample):.2f} ms/face)")

    if args.full:
        everything = fer2013_faces(args.data, None)
        result, seconds = timed(everything)
        print(f"FER2013 all {len(everything)}: {100 * result.found.mean():.1f}% found at "
              f"{faces.DEFAULT_THRESHOLD}; {seconds:.1f} s with {os.cpu_count()} processes "
              f"({1000 * seconds / len(everything):.2f} ms/face wall)")

    for name, pattern in (("JAFFE sample (256x256)", "jaffe/jaffe-sample/*.tiff"),
                          ("CK+48 sample (48x48)", "ckplus/CK+48-sample/*/*.png")):
        paths = sorted(args.data.glob(pattern))
        if not paths:
            continue
        images = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in paths]
        result, seconds = timed(images, workers=1)
        print(f"{name}: {int(result.found.sum())}/{len(images)} found; {1000 * seconds / len(images):.2f} ms/image")


if __name__ == "__main__":
    main()
