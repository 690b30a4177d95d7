"""Near-duplicate search benchmark: the multi-index hash search against the all-pairs scan.

    python benchmarks/near_duplicate_benchmark.py [--hashes 1000000] [--distance 4] [--json]

1. Generated hashes: ``--hashes`` 64-bit hashes, of which 10% are near copies of others (1 to
   ``--distance`` bits flipped, planted) and 5% share their low 32 bits (a crowded bucket, as real
   perceptual hashes of similar faces do). Times :func:`near_duplicate_pairs` on all of them, checks
   that every planted copy is found, and compares the pairs with the all-pairs scan on a 40,000-hash
   sample (the scan of a million would take hours).
2. FER2013: when ../shared/data holds the image-folder release, the perceptual hashes of all 35,887
   faces are searched both ways and the pairs and groups must be identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013-images.tar.gz"


def generated_hashes(count: int, distance: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes with planted near copies; returns (hashes, original index, copy index) of the plants."""
    rng = np.random.default_rng(seed)
    plants, crowded = count // 10, count // 20
    base = rng.integers(0, np.iinfo(np.int64).max, size=count - plants, dtype=np.int64).astype(np.uint64)
    base[:crowded] = (base[:crowded] & np.uint64(0xFFFFFFFF00000000)) | np.uint64(0x5A5A5A5A)
    originals = rng.choice(len(base), size=plants, replace=False)
    copies = base[originals].copy()
    flips = rng.integers(1, distance + 1, size=plants)
    for bit in range(distance):
        positions = rng.integers(0, 64, size=plants).astype(np.uint64)
        copies = np.where(flips > bit, copies ^ (np.uint64(1) << positions), copies)
    hashes = np.concatenate([base, copies])
    return hashes, originals, np.arange(len(base), len(hashes))


def fer2013_hashes() -> np.ndarray:
    """Perceptual hashes of every face in the image-folder release, computed as the audit does."""
    import cv2

    from fercurate.audit.quality import THUMB, perceptual_hashes

    faces = []
    with tarfile.open(RELEASE, "r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                face = cv2.imdecode(np.frombuffer(archive.extractfile(member).read(), np.uint8), cv2.IMREAD_GRAYSCALE)
                thumb = cv2.resize(face, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
                faces.append(cv2.resize(thumb, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32))
    return perceptual_hashes(np.stack(faces))


def timed(function, *arguments):
    started = time.perf_counter()
    result = function(*arguments)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--distance", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from fercurate.audit.duplicates import all_pairs_near_duplicates, components, near_duplicate_pairs

    hashes, originals, copies = generated_hashes(args.hashes, args.distance)
    (first, second, _), seconds = timed(near_duplicate_pairs, hashes, args.distance)
    found = set(zip(first.tolist(), second.tolist()))
    planted_found = all((min(a, b), max(a, b)) in found for a, b in zip(originals.tolist(), copies.tolist()))
    sample = np.random.default_rng(1).choice(len(hashes), size=min(40_000, len(hashes)), replace=False)
    index_pairs, index_seconds = timed(near_duplicate_pairs, hashes[sample], args.distance)
    scan_pairs, scan_seconds = timed(all_pairs_near_duplicates, hashes[sample], args.distance)
    figures = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "generated": {"hashes": len(hashes), "distance": args.distance, "pairs": len(first),
                      "seconds": round(seconds, 2), "every_planted_copy_found": planted_found,
                      "sample": len(sample), "sample_index_seconds": round(index_seconds, 3),
                      "sample_scan_seconds": round(scan_seconds, 2),
                      "sample_same_pairs": all(np.array_equal(a, b) for a, b in zip(index_pairs, scan_pairs))},
    }
    if RELEASE.exists():
        real = fer2013_hashes()
        index, index_seconds = timed(near_duplicate_pairs, real, args.distance)
        scan, scan_seconds = timed(all_pairs_near_duplicates, real, args.distance)
        figures["fer2013"] = {
            "hashes": len(real), "pairs": len(index[0]), "index_seconds": round(index_seconds, 3),
            "scan_seconds": round(scan_seconds, 2),
            "same_pairs": all(np.array_equal(a, b) for a, b in zip(index, scan)),
            "same_groups": bool(np.array_equal(components(len(real), *index[:2]), components(len(real), *scan[:2]))),
        }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, values in figures.items():
        print(name, values if isinstance(values, str) else "\n  " + "\n  ".join(f"{k}: {v}" for k, v in values.items()))
    checks = [figures["generated"]["every_planted_copy_found"], figures["generated"]["sample_same_pairs"],
              *(figures["fer2013"][key] for key in ("same_pairs", "same_groups") if "fer2013" in figures)]
    sys.exit(0 if all(checks) else 1)


if __name__ == "__main__":
    main()
