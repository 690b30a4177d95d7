"""The README's alignment picture: faces of each source as training read them before and after `fercurate align`.

Picks, with a seed, ``--per-source`` aligned faces of each source of an aligned workspace and draws
two rows per source: the image as ingested, resized whole to 48x48 (what training read before), and
the aligned face (what it reads now), both from the same loader training uses.

    python benchmarks/alignment_sheet.py WS [--out docs/images/alignment-fer2013-ckplus-jaffe.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from fercurate.compute import load_images
from fercurate.schema import face_filepaths
from fercurate.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/alignment-fer2013-ckplus-jaffe.png"))
    parser.add_argument("--per-source", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()
    workspace = Workspace(args.workspace)
    workspace.require()
    rows = workspace.manifest().select(["id", "source", "filepath", "aligned_filepath"]).to_pandas()
    rows = rows[rows["aligned_filepath"].notna()]
    if rows.empty:
        raise SystemExit(f"{args.workspace} has no aligned faces: run `fercurate align -w {args.workspace}` first")
    bands = []
    for source, part in rows.groupby("source"):
        chosen = part.sample(min(args.per_source, len(part)), random_state=args.seed).sort_values("id")
        before = load_images(workspace.root, chosen["filepath"].tolist())
        after = load_images(workspace.root, face_filepaths(chosen))
        bands.append(np.vstack([np.hstack(list(before)), np.hstack(list(after))]))
        print(f"{source}: {len(chosen)} faces (top: as ingested, resized whole; bottom: aligned)")
    width = max(band.shape[1] for band in bands)
    gap = np.full((4, width), 255, np.uint8)
    sheet = np.vstack([part for band in bands
                       for part in (np.pad(band, ((0, 0), (0, width - band.shape[1])), constant_values=255), gap)])
    sheet = cv2.resize(sheet, None, fx=args.zoom, fy=args.zoom, interpolation=cv2.INTER_NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), sheet):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
