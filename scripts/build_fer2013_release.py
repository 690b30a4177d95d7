"""Build fercurate/sources/data/fer2013_release.npz, the table of the original FER2013 release.

Inputs (the public data, see fercurate/sources/data/README.md):
    ferplus/fer2013new.csv          FER+: one row per fer2013.csv row, its Usage
    ferplus/image-folder-rows.csv   which fer2013.csv row each image-folder file is
    fer2013/fer2013-images.tar.gz   the Kaggle image-folder release (JPEGs hashed here)
    fer2013/fer2013-first300.csv    (optional) measures how far JPEG re-encoding moves the pHash

Usage: python scripts/build_fer2013_release.py ../shared/data [output.npz]
"""

from __future__ import annotations

import csv
import sys
import tarfile
from pathlib import Path

import numpy as np

from fercurate.sources.base import decode_image
from fercurate.sources.fer2013_release import USAGES, hamming, phash64


def build(data: Path, output: Path) -> None:
    with open(data / "ferplus/fer2013new.csv", newline="") as handle:
        usage = np.array([USAGES.index(row["Usage"]) for row in csv.DictReader(handle)], dtype=np.uint8)
    row_of_path: dict[str, int] = {}
    with open(data / "ferplus/image-folder-rows.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            row_of_path[row["path"]] = int(row["row"])
    faces = np.zeros((len(usage), 48, 48), dtype=np.uint8)
    key = np.zeros(len(usage), dtype="S40")
    has_phash = np.zeros(len(usage), dtype=bool)
    with tarfile.open(data / "fer2013/fer2013-images.tar.gz", mode="r|*") as archive:
        for member in archive:
            relpath = member.name.split("/", 1)[-1]
            if member.isfile() and relpath in row_of_path:
                row = row_of_path[relpath]
                faces[row] = decode_image(archive.extractfile(member).read())
                parts = Path(relpath).parts
                key[row] = f"{parts[-2]}/{Path(relpath).stem}".encode()
                has_phash[row] = True
    phash = phash64(faces)
    np.savez_compressed(output, usage=usage, key=key, phash=phash, has_phash=has_phash)
    print(f"{len(usage)} rows, {has_phash.sum()} with an image-folder file -> {output} "
          f"({output.stat().st_size // 1024} KiB)")
    first300 = data / "fer2013/fer2013-first300.csv"
    if first300.exists():
        with open(first300, newline="") as handle:
            pixels = np.array([np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48)
                               for row in csv.DictReader(handle)])
        rows = np.flatnonzero(has_phash[:len(pixels)])
        same = hamming(phash64(pixels[rows]), phash[rows])
        others = hamming(phash[rows][:, None], phash[rows][None, :])[~np.eye(len(rows), dtype=bool)]
        print(f"CSV pixels vs their JPEG: pHash distance max {same.max()}, mean {same.mean():.2f}, "
              f"histogram {np.bincount(same).tolist()}; distinct faces: min {others.min()}, "
              f"1st percentile {np.percentile(others, 1):.0f}, median {np.median(others):.0f}")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    build(root, Path(sys.argv[2]) if len(sys.argv) > 2 else
          Path(__file__).resolve().parent.parent / "fercurate/sources/data/fer2013_release.npz")
