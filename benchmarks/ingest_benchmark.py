"""Ingest benchmark: fercurate against the common notebook loop, on full-size FER2013.

Prints rows/s, wall time and peak memory for:

- the notebook way: pandas ``read_csv`` of fer2013.csv, split each pixel string, one PNG per row;
- ``fercurate ingest fer2013 fer2013.csv`` (the whole command, start-up included);
- ``fercurate ingest fer2013`` on the image-folder release, packed (.tar.gz) and unpacked.

The full-size fer2013.csv (35,887 rows, about 290 MB) is generated from the real image-folder
release in ../shared/data when it is there (its real pixels, labels and splits, in fer2013.csv's
row order: Training, PublicTest, PrivateTest), else from the embedded demo faces.

    python benchmarks/ingest_benchmark.py [--out bench-out] [--json]

Each measurement runs in its own process; peak memory is that process's maximum resident set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013-images.tar.gz"
FER2013_ROWS = 35_887
CODES = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}
USAGE_ORDER = {"Training": 0, "PublicTest": 1, "PrivateTest": 2}

NOTEBOOK_LOOP = """
import os, sys
import numpy as np, pandas as pd
from PIL import Image
data = pd.read_csv(sys.argv[1])
out = sys.argv[2]
for i, row in data.iterrows():
    pixels = np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48)
    folder = os.path.join(out, row["Usage"], str(row["emotion"]))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
"""


def write_full_csv(target: Path) -> str:
    """Write a 35,887-row fer2013.csv; say where its pixels came from."""
    from fercurate.sources.base import decode_image

    rows: list[tuple[int, str, str, np.ndarray]] = []
    if RELEASE.exists():
        with tarfile.open(RELEASE, "r|gz") as archive:
            for member in archive:
                parts = Path(member.name).parts
                if member.isfile() and member.name.endswith(".jpg"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    usage = Path(member.name).stem.split("_")[0]
                    rows.append((USAGE_ORDER[usage], member.name, parts[-2], decode_image(handle.read())))
        rows.sort(key=lambda row: (row[0], row[1]))
        origin = f"the real image-folder release ({RELEASE.name})"
    else:
        from fercurate.sources.demo import draw_demo_faces

        images, codes = draw_demo_faces(per_class=FER2013_ROWS // 7 + 1)
        names = {code: name for name, code in CODES.items()}
        rows = [(0, str(i), names[int(codes[i])], images[i]) for i in range(FER2013_ROWS)]
        origin = "the embedded demo faces (../shared/data is absent)"
    usages = {value: key for key, value in USAGE_ORDER.items()}
    with open(target, "w") as handle:
        handle.write("emotion,pixels,Usage\n")
        for order, _, label, pixels in rows[:FER2013_ROWS]:
            handle.write(f"{CODES[label]},{' '.join(map(str, pixels.ravel().tolist()))},{usages[order]}\n")
    return origin


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak resident memory (MB) of one command in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return {"seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the work files here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="fercurate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "fer2013.csv"
    origin = write_full_csv(csv_path)
    fercurate = [sys.executable, "-m", "fercurate_cli", "ingest", "fer2013"]

    results: dict[str, dict[str, float]] = {}

    def run(name: str, command: list[str], rows: int, fresh: Path) -> None:
        shutil.rmtree(fresh, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        result = measure(command)
        result["rows_per_s"] = round(rows / result["seconds"])
        results[name] = result
        print(f"{name:<48} {result['seconds']:>7.2f} s {result['rows_per_s']:>8} rows/s "
              f"{result['peak_mb']:>7.0f} MB", file=sys.stderr)

    run("notebook loop (pandas + split + PIL save)", [sys.executable, "-c", NOTEBOOK_LOOP, str(csv_path),
        str(work / "notebook")], FER2013_ROWS, work / "notebook")
    run("fercurate ingest fer2013 fer2013.csv", [*fercurate, str(csv_path), "-w", str(work / "ws-csv"), "--json"],
        FER2013_ROWS, work / "ws-csv")
    if RELEASE.exists():
        run("fercurate ingest fer2013 fer2013-images.tar.gz",
            [*fercurate, str(RELEASE), "-w", str(work / "ws-tar"), "--json"], FER2013_ROWS, work / "ws-tar")
        unpacked = work / "release"
        if not unpacked.exists():
            with tarfile.open(RELEASE) as archive:
                archive.extractall(unpacked, filter="data")
        run("fercurate ingest fer2013 <unpacked folder>",
            [*fercurate, str(unpacked), "-w", str(work / "ws-folder"), "--json"], FER2013_ROWS, work / "ws-folder")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "csv": f"{csv_path.stat().st_size / 1e6:.0f} MB, {FER2013_ROWS} rows, from {origin}",
              "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
