"""Class, source, subject and demographic balance of a workspace.

Demographics are reported as recorded: ``unknown`` is a value with its own count and share, and
every value is broken down by where it came from (dataset metadata, a user sidecar, an
estimator). A user's sidecar CSV (``id`` plus any of gender, age_group, ethnicity) is joined by
id with :func:`attach_demographics`. :func:`synthetic_share` counts the synthetic rows per split and
class, split the way ``fercurate export`` will split them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fercurate.errors import AuditError
from fercurate.schema import CANONICAL_LABELS, DEMOGRAPHIC_COLUMNS, UNKNOWN
from fercurate.splits import SPLITS, SplitOptions, assign_splits, leakage_groups

SPLIT_COLUMN = "split_used"
#: A label x demographic cell with fewer faces than this (in a split) is flagged as thin.
THIN_CELL = 20
#: The demographic columns crossed with the label (ethnicity is too rarely known to cross).
CROSSED_COLUMNS = ("gender", "age_group")
#: Per crossed column, the audit row column naming the thin cell a face is in (None when its cell is not thin).
THIN_CELL_COLUMNS: dict[str, str] = {column: f"thin_cell_{column}" for column in CROSSED_COLUMNS}
#: The split of rows that export's split assignment leaves out (leaking duplicates, synthetic rows of test parents).
EXCLUDED_SPLIT = "(excluded)"
#: The label of the per-split totals in :func:`synthetic_share`.
ALL_LABELS = "(all)"


def split_of(rows: pd.DataFrame) -> pd.Series:
    """The split each row is judged in: the curated split where assigned, else the source's."""
    return rows["split"].fillna(rows["source_split"]).fillna("(none)")


def balance_tables(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts, shares and imbalance ratios per label x source x split, per subject, and per
    demographic value and its provenance."""
    rows = rows.assign(**{SPLIT_COLUMN: split_of(rows)})
    labels = [label for label in CANONICAL_LABELS if label in set(rows["label"])]
    per_split = (rows.groupby([SPLIT_COLUMN, "label"]).size().unstack(fill_value=0)
                 .reindex(columns=labels, fill_value=0))
    shares = per_split.div(per_split.sum(axis=1), axis=0).round(4)
    present = per_split.where(per_split > 0)
    imbalance = (present.max(axis=1) / present.min(axis=1)).round(2)
    by_source = (rows.groupby(["source", SPLIT_COLUMN, "label"]).size().rename("rows").reset_index())
    by_source["share_of_source_split"] = (
        by_source["rows"] / by_source.groupby(["source", SPLIT_COLUMN])["rows"].transform("sum")).round(4)
    subjects = rows.dropna(subset=["subject_id"])
    per_subject = (subjects.groupby(["source", "subject_id", "label"]).size().unstack(fill_value=0)
                   .reindex(columns=[label for label in labels if label in set(subjects["label"])], fill_value=0))
    demographics = {}
    for column in DEMOGRAPHIC_COLUMNS:
        counts = rows.groupby([column, f"{column}_source"]).size().rename("rows").reset_index()
        counts["share"] = (counts["rows"] / len(rows)).round(4)
        demographics[column] = {
            "unknown_share": round(float((rows[column] == UNKNOWN).mean()), 4) if len(rows) else 0.0,
            "values": counts.rename(columns={f"{column}_source": "source"}).to_dict("records"),
        }
    cells = {column: demographic_cells(rows, column) for column in CROSSED_COLUMNS}
    return {
        "rows": len(rows),
        "demographic_cells": cells,
        "thin_cells": thin_cell_columns(rows, cells),
        "per_split": per_split,
        "shares": shares,
        "imbalance_ratio": imbalance,
        "by_source": by_source,
        "per_subject": per_subject,
        "demographics": demographics,
    }


def demographic_cells(rows: pd.DataFrame, column: str, thin_below: int = THIN_CELL) -> pd.DataFrame:
    """Faces per split x label x value of ``column`` (every known value crossed with every label, so
    empty cells show), with each cell's share of its label, the share of it that was estimated
    rather than known, and whether it is thin (a known value with fewer than ``thin_below`` faces)."""
    split = split_of(rows) if SPLIT_COLUMN not in rows else rows[SPLIT_COLUMN]
    frame = pd.DataFrame({"split": split.to_numpy(), "label": rows["label"].to_numpy(),
                          "value": rows[column].to_numpy(),
                          "estimated": rows[f"{column}_source"].str.startswith("estimated:").to_numpy()})
    counted = frame.groupby(["split", "label", "value"]).agg(rows=("estimated", "size"), estimated=("estimated", "sum"))
    values = sorted(set(frame["value"]) - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in set(frame["value"]) else [])
    labels = [label for label in CANONICAL_LABELS if label in set(frame["label"])]
    full = pd.MultiIndex.from_product([sorted(set(frame["split"])), labels, values], names=["split", "label", "value"])
    cells = counted.reindex(full, fill_value=0).reset_index()
    per_label = cells.groupby(["split", "label"])["rows"].transform("sum")
    cells["share_of_label"] = (cells["rows"] / per_label.where(per_label > 0)).fillna(0).round(4)
    cells["estimated_share"] = (cells["estimated"] / cells["rows"].where(cells["rows"] > 0)).fillna(0).round(4)
    cells["thin"] = (cells["value"] != UNKNOWN) & (cells["rows"] < thin_below)
    return cells.drop(columns="estimated")


def thin_cell_columns(rows: pd.DataFrame, cells: dict[str, pd.DataFrame]) -> dict[str, list[str | None]]:
    """Per row, the thin cell of each crossed column it sits in (``<label> x <value> (<split>)``, e.g.
    ``fear x female (train)``), or None: one audit column per crossed column (see
    :data:`THIN_CELL_COLUMNS`), so FiftyOne can filter the faces of each thin cell."""
    split = (split_of(rows) if SPLIT_COLUMN not in rows else rows[SPLIT_COLUMN]).tolist()
    columns: dict[str, list[str | None]] = {}
    for column, table in cells.items():
        thin = table[table["thin"]]
        names = {(cell.split, cell.label, cell.value): f"{cell.label} x {cell.value} ({cell.split})"
                 for cell in thin.itertuples()}
        columns[THIN_CELL_COLUMNS[column]] = [names.get(key) for key in zip(split, rows["label"], rows[column])]
    return columns


def synthetic_share(rows: pd.DataFrame, near_group: np.ndarray | None = None,
                    options: SplitOptions | None = None) -> pd.DataFrame:
    """Rows, synthetic rows (``is_synthetic``) and the synthetic share per split x label, plus each
    split's total (label ``(all)``), in the splits ``fercurate export`` assigns: the same leakage
    groups (subjects, identical pixels, the audit's ``near_group``, parent links) and split options.
    Rows that assignment leaves out are counted under the split ``(excluded)``."""
    assignment = assign_splits(rows, leakage_groups(rows, near_group), options)
    frame = pd.DataFrame({"split": pd.Series(assignment.split, dtype=object).fillna(EXCLUDED_SPLIT).to_numpy(),
                          "label": rows["label"].to_numpy(),
                          "synthetic": rows["is_synthetic"].astype(bool).to_numpy()})
    splits = [name for name in (*SPLITS, EXCLUDED_SPLIT) if name in set(frame["split"])]
    labels = [label for label in CANONICAL_LABELS if label in set(frame["label"])]
    index = pd.MultiIndex.from_product([splits, [*labels, ALL_LABELS]], names=["split", "label"])
    counts = pd.concat([frame, frame.assign(label=ALL_LABELS)]).groupby(["split", "label"])["synthetic"].agg(
        rows="size", synthetic="sum")
    table = counts.reindex(index, fill_value=0).astype(int).reset_index()
    table["synthetic_share"] = (table["synthetic"] / table["rows"].where(table["rows"] > 0)).fillna(0.0).round(4)
    return table


def synthetic_share_grid(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`synthetic_share` table as labels x splits, each cell ``synthetic/rows (share)``, for
    the report and the CLI."""
    cells = table.assign(cell=[f"{synthetic}/{rows} ({share:.1%})" for synthetic, rows, share
                               in zip(table["synthetic"], table["rows"], table["synthetic_share"])])
    grid = cells.pivot(index="label", columns="split", values="cell")
    return grid.reindex(index=list(dict.fromkeys(table["label"])), columns=list(dict.fromkeys(table["split"])))


def attach_demographics(manifest: pa.Table, sidecar: Path) -> tuple[pa.Table, dict[str, int]]:
    """The manifest with demographic values from a user's CSV joined by ``id`` (source
    ``user-sidecar``); returns it and counts of matched and unmatched sidecar rows.

    Empty cells in the sidecar leave the row's value as it was; ``unknown`` is accepted as a value.
    """
    try:
        table = pd.read_csv(sidecar, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise AuditError(f"the demographics sidecar {sidecar} cannot be read ({error})",
                         "give a CSV with an id column and any of gender, age_group, ethnicity") from None
    if "id" not in table.columns:
        raise AuditError(f"{sidecar} has no 'id' column", "add the workspace row id beside the demographics")
    columns = [column for column in DEMOGRAPHIC_COLUMNS if column in table.columns]
    if not columns:
        raise AuditError(f"{sidecar} has none of the columns {', '.join(DEMOGRAPHIC_COLUMNS)}",
                         "name its columns id, gender, age_group and/or ethnicity")
    table = table.drop_duplicates("id", keep="last").set_index("id")
    ids = manifest["id"].to_pylist()
    matched = table.index.isin(ids)
    for column in columns:
        given = table[column].reindex(ids)
        given = given.where(given.notna() & (given.str.strip() != ""))
        current = manifest[column].to_pylist()
        current_source = manifest[f"{column}_source"].to_pylist()
        values, sources = [], []
        for old, old_source, new in zip(current, current_source, given.tolist()):
            if isinstance(new, str):
                new = new.strip().lower()
                values.append(new)
                sources.append(UNKNOWN if new == UNKNOWN else "user-sidecar")
            else:
                values.append(old)
                sources.append(old_source)
        manifest = with_demographic(manifest, column, values, sources)
    return manifest, {"matched": int(matched.sum()), "unmatched": int((~matched).sum())}


def with_demographic(manifest: pa.Table, column: str, values: list[str], sources: list[str]) -> pa.Table:
    """The manifest with one demographic column and its provenance column replaced."""
    for name, data in ((column, values), (f"{column}_source", sources)):
        index = manifest.schema.get_field_index(name)
        manifest = manifest.set_column(index, manifest.schema.field(index), pa.array(data, pa.string()))
    return manifest
