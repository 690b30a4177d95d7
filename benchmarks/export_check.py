"""Check an export against its workspace: no leakage, and every format reloads with the same rows.

    python benchmarks/export_check.py WORKSPACE EXPORT

Recomputes the leakage groups from the workspace (subjects, exact and audited near duplicates,
parent/child) and runs the same ``leakage_violations`` the tests use on the exported splits;
then reloads the Hugging Face dataset, the parquet files, the image folder, the manifest, the
FER2013-style CSV (by re-ingesting it) and the FiftyOne export, and compares ids, splits, labels
and FER+'s crowd votes (``label_votes``) with the workspace's. Exits 1 on any failure.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    from fercurate.export import audited_near_groups
    from fercurate.sources import open_source
    from fercurate.splits import leakage_groups, leakage_violations
    from fercurate.workspace import Workspace

    workspace, export = Workspace(sys.argv[1]), Path(sys.argv[2])
    rows = workspace.manifest().to_pandas()
    groups = leakage_groups(rows, audited_near_groups(workspace, rows))
    exported = pd.read_parquet(export / "manifest.parquet", columns=["id", "split", "label"])
    split = rows["id"].map(dict(zip(exported["id"], exported["split"]))).to_numpy(dtype=object)
    problems = leakage_violations(rows, split, groups)
    subjects = rows.assign(split=split).dropna(subset=["split", "subject_id"]).groupby("subject_id")["split"].nunique()
    checks = {
        "leakage violations (groups across splits, synthetic in test)": len(problems) == 0,
        "subjects in more than one split": int((subjects > 1).sum()) == 0,
    }
    expected = Counter(zip(exported["split"], exported["label"]))
    exported_ids = set(exported["id"])
    votes = {row_id: dict(pairs) for row_id, pairs in zip(rows["id"], rows["label_votes"])
             if pairs is not None and row_id in exported_ids}
    exported_votes = pd.read_parquet(export / "manifest.parquet", columns=["id", "label_votes"])
    checks[f"manifest.parquet: the same FER+ votes per id ({len(votes)} exported rows with votes)"] = {
        row_id: dict(pairs) for row_id, pairs in zip(exported_votes["id"], exported_votes["label_votes"])
        if pairs is not None} == votes
    if (export / "hf").exists():
        import datasets

        reloaded = datasets.load_from_disk(str(export / "hf"))
        names = reloaded[next(iter(reloaded))].features["label"].names
        checks["hf load_from_disk: same split and label per id"] = dict(
            (row_id, (name, names[label])) for name in reloaded
            for row_id, label in zip(reloaded[name]["id"], reloaded[name]["label"])
        ) == dict(zip(exported["id"], zip(exported["split"], exported["label"])))
        hf_votes = {row_id: {key: value for key, value in cell.items() if value is not None}
                    for name in reloaded for row_id, cell in zip(reloaded[name]["id"], reloaded[name]["label_votes"])
                    if cell is not None}
        checks["hf load_from_disk: the same FER+ votes per id"] = hf_votes == votes
    if (export / "parquet").exists():
        parquet = pd.concat([pd.read_parquet(path, columns=["id"]) for path in (export / "parquet").glob("*.parquet")])
        checks["parquet: same ids"] = sorted(parquet["id"]) == sorted(exported["id"])
    if (export / "imagefolder").exists():
        files = Counter((path.parts[-3], path.parts[-2]) for path in (export / "imagefolder").glob("*/*/*.png"))
        checks["imagefolder: same count per split and label"] = files == expected
    if (export / "fer2013.csv").exists():
        usage = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
        with tempfile.TemporaryDirectory() as folder:
            again = Workspace(folder)
            report = again.ingest(open_source("fer2013", export / "fer2013.csv"))
            counts = Counter((usage[row["source_split"]], row["label"]) for row in again.manifest().to_pylist())
        contempt = Counter({key: value for key, value in expected.items() if key[1] == "contempt"})
        checks["fer2013.csv re-ingested: same count per split and label, no skips"] = (
            counts == expected - contempt and not report.skips)
    if (export / "fiftyone").exists():
        from fercurate.audit.fiftyone_database import prepare_fiftyone_database, workspace_database_dir

        prepare_fiftyone_database(workspace_database_dir(workspace))
        import fiftyone as fo

        dataset = fo.Dataset.from_dir(str(export / "fiftyone"), dataset_type=fo.types.FiftyOneDataset)
        try:
            checks["fiftyone from_dir: same ids and splits"] = dict(
                zip(*dataset.values(["fercurate_id", "split"]))) == dict(zip(exported["id"], exported["split"]))
        finally:
            dataset.delete()
    for name, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    print(f"{len(exported)} exported rows, {len(np.unique(groups))} leakage groups")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
