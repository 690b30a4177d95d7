"""The README's occluder contact sheet: every occluder on one real training face per emotion.

Picks, with a seed, one FER2013 training face of each emotion that has landmarks (the 5 points
``fercurate audit`` stores, or CK+'s 68) from a workspace, and draws the contact sheet: the faces,
then one row per occluder placed from those landmarks.

    python benchmarks/occluder_sheet.py WS [--out docs/images/occluders-fer2013.png] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc

from fercurate.schema import CANONICAL_LABELS
from fercurate.synth import contact_sheet
from fercurate.synth.occluders import placement_for
from fercurate.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/occluders-fer2013.png"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    workspace = Workspace(args.workspace)
    manifest = workspace.manifest()
    training = manifest.filter(pc.and_(pc.equal(manifest["source_split"], "Training"),
                                       pc.is_valid(manifest["landmarks"]))).to_pylist()
    rng = np.random.default_rng(args.seed)
    picked = []
    for label in CANONICAL_LABELS:
        candidates = [row for row in training if row["label"] == label]
        if candidates:
            picked.append(candidates[rng.integers(len(candidates))])
    if not picked:
        raise SystemExit(f"{args.workspace} has no training face with landmarks: run `fercurate audit` first")
    faces = [cv2.imread(str(workspace.image_path(row["filepath"])), cv2.IMREAD_GRAYSCALE) for row in picked]
    points = [np.asarray(row["landmarks"], np.float32) for row in picked]
    contact_sheet(faces, args.out, landmarks=points, size=96, seed=3)
    for row, landmarks in zip(picked, points):
        print(f"{row['label']:<10} {placement_for(landmarks):<10} {row['id']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
