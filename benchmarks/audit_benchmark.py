"""Audit benchmark: the full FER2013 release (35,887 images) from ../shared/data.

Ingests fer2013-images.tar.gz into a fresh workspace, runs the audit and prints the time of each
part (balance, quality with face detection, exact + near duplicates, label noise, writing the
report), then the FiftyOne sync time unless --no-fiftyone.

    python benchmarks/audit_benchmark.py [--workspace DIR] [--no-fiftyone] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013-images.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="keep the workspace here (default: temp)")
    parser.add_argument("--no-fiftyone", action="store_true", help="skip the FiftyOne sync")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not RELEASE.exists():
        sys.exit(f"{RELEASE} is absent: this benchmark needs the real FER2013 release")

    from fercurate.audit.run import audit_workspace
    from fercurate.sources import open_source
    from fercurate.workspace import Workspace

    root = args.workspace or Path(tempfile.mkdtemp(prefix="fercurate-audit-bench-"))
    shutil.rmtree(root, ignore_errors=True)
    workspace = Workspace(root)
    started = time.perf_counter()
    workspace.ingest(open_source("fer2013", RELEASE))
    figures = {"ingest": round(time.perf_counter() - started, 2)}
    result = audit_workspace(workspace)
    figures.update({f"audit {step}": value for step, value in result.seconds.items()})
    figures["balance + quality + duplicates"] = round(
        result.seconds["balance"] + result.seconds["quality"] + result.seconds["duplicates"], 2)
    if not args.no_fiftyone:
        from fercurate.audit.fiftyone_database import prepare_fiftyone_database
        from fercurate.audit.fiftyone_sync import sync_to_fiftyone

        prepare_fiftyone_database(root / "fiftyone-db")
        started = time.perf_counter()
        sync_to_fiftyone(workspace, audit_rows=None, embeddings=None)
        figures["fiftyone sync (no audit fields)"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone

        sync_audit_to_fiftyone(workspace)
        figures["fiftyone sync (re-sync with audit fields, views, brain)"] = round(time.perf_counter() - started, 2)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "images": result.summary["rows"], "seconds": figures, "findings": {
                  "duplicates": result.summary["duplicates"], "quality": result.summary["quality"],
                  "label_noise_flagged": result.summary["label_noise"].get("flagged"),
                  "label_noise_accuracy": result.summary["label_noise"].get("cross_validated_accuracy")}}
    for name, value in figures.items():
        print(f"{name:<58} {value:>8.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.workspace is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
