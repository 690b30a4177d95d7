"""Export a workspace as balanced, leakage-free splits in the formats FER code already reads, with
a dataset card.

Formats (each a folder or file inside the output folder):

- ``imagefolder``: ``imagefolder/<split>/<label>/<id>.png``
- ``hf``: a Hugging Face ``DatasetDict`` (``hf/``, ``save_to_disk``) and ``parquet/<split>.parquet``,
  with a ``ClassLabel`` in canonical order and every schema column
- ``fer2013-csv``: ``fer2013.csv`` (``emotion,pixels,Usage``; 48x48 gray; train/validation/test as
  Training/PublicTest/PrivateTest) so existing FER2013 code runs unchanged. FER2013 has no code
  for contempt: such rows are left out of this file and counted.
- ``manifest``: ``manifest.parquet`` and ``manifest.csv`` with the curated ``split`` and ``fold``
- ``fiftyone``: a FiftyOne dataset export (``fiftyone/``), images included

Nested columns (FER+'s ``label_votes``, CK+'s ``landmarks`` and ``action_units``) travel with the
rows: the parquet manifest keeps the schema's own map and list types; the Hugging Face dataset, which
has no map type, gets each string-keyed map as a struct with one field per key (e.g.
``label_votes.neutral``) and other maps as a list of ``{key, value}`` structs; ``manifest.csv``
flattens the structs into ``label_votes.<key>`` columns. Rows without votes hold null.

Images: every format carries the face as training uses it, the aligned face where ``fercurate
align`` made one (``aligned_filepath``), else the image as ingested; the manifest keeps both paths
and the transform (``alignment``).

Invariants: the whole output is built in a temporary folder beside the target and renamed into
place, so it is either complete or absent. An existing output is replaced only when asked and only
when fercurate wrote it (it carries :data:`EXPORT_MARKER`); an output that is, contains or lies
inside a workspace is refused. Staging folders left by a killed export are removed by the next
export to the same place. An export that would select nothing is refused with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from fercurate.audit.review import DROP_FLAG, apply_reviews, read_reviews, review_summary
from fercurate.errors import ExportError
from fercurate.options import BALANCE_HELP, parse_balance
from fercurate.schema import CANONICAL_LABELS, ROW_SCHEMA, SOURCE_LABEL_MAPS, face_filepaths
from fercurate.sources.ferplus import VOTE_COLUMNS
from fercurate.splits import (
    REBALANCE_DROP_FLAG,
    SPLITS,
    SplitOptions,
    assign_splits,
    balanced_selection,
    leakage_groups,
    leakage_violations,
    subject_folds,
)
from fercurate.atomic import current_umask
from fercurate.workspace import Workspace

FORMATS = ("imagefolder", "hf", "fer2013-csv", "manifest", "fiftyone")
#: The file that marks a folder as a fercurate export, so ``--overwrite`` replaces nothing else.
EXPORT_MARKER = ".fercurate-export"
_STAGING = ".staging-"
_OLD = ".old-"
FER2013_CODES = {label: int(code) for code, label in SOURCE_LABEL_MAPS["fer2013"].items()}
FER2013_USAGE = {"train": "Training", "validation": "PublicTest", "test": "PrivateTest"}


class ExportOptions(BaseModel):
    """What to export and how to split it."""

    formats: list[str] = Field(default_factory=lambda: ["imagefolder", "hf", "fer2013-csv", "manifest"])
    split: SplitOptions = Field(default_factory=SplitOptions)
    balance: str | dict[str, float] | None = Field(None, description=f"{BALANCE_HELP} (training split only)")
    kfold: int | None = Field(None, ge=2, description="also write subject-independent fold numbers")
    sources: list[str] | None = Field(None, description="only rows of these sources")
    exclude_flags: list[str] = Field(default_factory=list, description="leave out rows carrying these flags")
    apply_rebalance_drops: bool = Field(True, description="leave out the real training rows `fercurate synthesize`'s "
                                                          f"plan subsampled away (flag {REBALANCE_DROP_FLAG})")
    overwrite: bool = False

    @field_validator("balance", mode="before")
    @classmethod
    def _known_balance(cls, value: Any) -> Any:
        return None if value is None else parse_balance(value)


@dataclass
class ExportReport:
    """What an export wrote and how the rows were split."""

    output: Path
    rows: pd.DataFrame  # exported rows with split (and fold)
    split_report: dict[str, Any]
    balance_report: dict[str, Any] | None
    excluded: dict[str, int]
    table: pa.Table | None = None  # the exported rows in the row schema's types, with split (and fold)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"output": str(self.output), "rows": len(self.rows), "split": self.split_report,
                "balance": self.balance_report, "excluded": self.excluded, "files": self.files,
                "per_split_and_label": _per_split(self.rows)}


def _per_split(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    table = rows.groupby(["split", "label"]).size().unstack(fill_value=0)
    return {split: {label: int(count) for label, count in counts.items() if count}
            for split, counts in table.iterrows()}


def reviewed_manifest(workspace: Workspace) -> pa.Table:
    """The workspace's rows as every decision reads them: with the review log applied."""
    return apply_reviews(workspace.manifest(), read_reviews(workspace))


def plan_export(workspace: Workspace, options: ExportOptions, manifest: pa.Table | None = None
                ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any] | None, dict[str, int]]:
    """The rows to export with their split (and fold), and reports of the split and the balance.
    ``manifest`` is :func:`reviewed_manifest` when the caller has read it already."""
    manifest = reviewed_manifest(workspace) if manifest is None else manifest
    if manifest.num_rows == 0:
        raise ExportError(f"{workspace.root} holds no rows: run `fercurate ingest` first")
    rows = manifest.drop_columns(_NESTED_COLUMNS).to_pandas()
    rows["manifest_row"] = np.arange(len(rows))
    near_group = audited_near_groups(workspace, rows)
    groups = leakage_groups(rows, near_group)
    assignment = assign_splits(rows, groups, options.split)
    problems = leakage_violations(rows, assignment.split, groups)
    if len(problems):  # a bug, not bad input: never write a leaking export
        raise RuntimeError(f"split assignment leaks: {problems.head().to_dict('records')}")
    rows = rows.assign(split=assignment.split, excluded_reason=assignment.excluded_reason, leakage_group=groups)
    if options.kfold:
        rows["fold"] = subject_folds(rows, groups, options.kfold, options.split.seed)
    keep = rows["split"].notna().to_numpy().copy()
    if options.sources:
        absent = sorted(set(options.sources) - set(rows["source"]))
        if absent:
            raise ExportError(f"--sources names {', '.join(absent)}, which the workspace does not hold",
                              f"use some of {', '.join(sorted(set(rows['source'])))}")
        chosen = rows["source"].isin(options.sources).to_numpy()
        rows.loc[keep & ~chosen, "excluded_reason"] = "source not selected"
        keep &= chosen
    dropped = _flagged(rows, [DROP_FLAG])
    rows.loc[keep & dropped, "excluded_reason"] = "dropped in review"
    keep &= ~dropped
    if options.apply_rebalance_drops:  # the subsampled rows and anything derived from them
        subsampled = _flagged(rows, [REBALANCE_DROP_FLAG])
        subsampled = subsampled | rows["parent_id"].isin(rows.loc[subsampled, "id"]).to_numpy()
        rows.loc[keep & subsampled, "excluded_reason"] = "subsampled by the rebalance plan"
        keep &= ~subsampled
    if options.exclude_flags:
        flagged = _flagged(rows, options.exclude_flags)
        rows.loc[keep & flagged, "excluded_reason"] = "flag excluded"
        keep &= ~flagged
    balance_report = None
    if options.balance is not None:
        kept, balance_report = balanced_selection(rows["label"].to_numpy(), np.where(keep, rows["split"], None),
                                                  options.balance, options.split.seed)
        rows.loc[keep & ~kept, "excluded_reason"] = "balanced out of the training split"
        keep &= kept
        if not (keep & (rows["split"] == "train").to_numpy()).any():
            raise ExportError(f"the balance target {options.balance!r} leaves no training row",
                              "give a target of at least one face per class, e.g. uniform or uniform:500")
    excluded = rows.loc[~keep, "excluded_reason"].value_counts().to_dict()
    if not keep.any():
        reasons = ", ".join(f"{count} {reason}" for reason, count in excluded.items())
        raise ExportError(f"these options select no row of {workspace.root} ({reasons})",
                          "relax --sources, --exclude-flag or --balance")
    return rows[keep].reset_index(drop=True), assignment.report, balance_report, excluded


def _flagged(rows: pd.DataFrame, flags: list[str]) -> np.ndarray:
    """Whether each row carries any of ``flags``."""
    wanted = set(flags)
    return rows["flags"].map(lambda row_flags: row_flags is not None and not wanted.isdisjoint(row_flags)).to_numpy(bool)


def audited_near_groups(workspace: Workspace, rows: pd.DataFrame) -> np.ndarray | None:
    """The audit's near-duplicate groups aligned with ``rows``, when an audit of them exists."""
    path = workspace.root / "audit" / "rows.parquet"
    if not path.exists():
        return None
    audit = pd.read_parquet(path, columns=["id", "near_group"]).set_index("id")["near_group"]
    aligned = audit.reindex(rows["id"])
    return aligned.fillna(-1).to_numpy(dtype=np.int64)


def export_dataset(workspace: Workspace, output: str | Path, options: ExportOptions | None = None,
                   progress: Callable[[str], None] | None = None) -> ExportReport:
    """Split, select and write the workspace in the chosen formats, with a dataset card."""
    options = options or ExportOptions()
    output = Path(output)
    unknown = set(options.formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown format(s) {sorted(unknown)}", f"use {', '.join(FORMATS)}")
    if not options.formats:
        raise ExportError("no export format chosen", f"give --format with some of {', '.join(FORMATS)}")
    check_output_folder(workspace, output, options.overwrite)
    # A reader's lock (works on a read-only workspace) unless the FiftyOne format updates the mirror.
    with workspace.lock(shared="fiftyone" not in options.formats):
        manifest = reviewed_manifest(workspace)
        rows, split_report, balance_report, excluded = plan_export(workspace, options, manifest)
        missing = workspace.missing_images(face_filepaths(rows))
        if missing:
            raise ExportError(f"{len(missing)} image(s) of the exported rows are missing from {workspace.root} "
                              f"(first: {missing[0]})", "re-run `fercurate ingest` of their source to restore them")
        table = exported_table(manifest, rows)
        report = ExportReport(output, rows, split_report, balance_report, excluded, table)
        output.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(output)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}{_STAGING}{os.getpid()}-", dir=output.parent))
        try:
            writers: dict[str, Callable[[Workspace, pa.Table, Path], dict[str, Any]]] = {
                "imagefolder": write_imagefolder, "hf": write_hf, "fer2013-csv": write_fer2013_csv,
                "manifest": write_manifest, "fiftyone": write_fiftyone,
            }
            notes: dict[str, Any] = {}
            for name in options.formats:
                if progress is not None:
                    progress(name)
                notes[name] = writers[name](workspace, table, staging)
            write_card(workspace, report, options, notes, staging)
            (staging / "export.json").write_text(json.dumps({**report.to_dict(), "notes": notes,
                                                            "options": json.loads(options.model_dump_json())},
                                                           indent=2, default=str))
            (staging / EXPORT_MARKER).write_text(json.dumps({"workspace": str(workspace.root.resolve())}) + "\n")
            staging.chmod(0o777 & ~current_umask())
            _replace_folder(staging, output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    report.files = sorted(str(path.relative_to(output)) for path in output.iterdir() if path.name != EXPORT_MARKER)
    return report


def is_workspace(folder: Path) -> bool:
    """Whether ``folder`` is a fercurate workspace (an export's manifest alone does not make one)."""
    return (folder / "images").is_dir() and any((folder / name).is_file() for name in ("manifest.parquet", ".lock"))


def check_output_folder(workspace: Workspace, output: Path, overwrite: bool) -> None:
    """Refuse an output that could destroy data: the workspace itself, a folder holding it or
    inside it, any other workspace, or an existing folder that is not a fercurate export."""
    target, root = output.resolve(), workspace.root.resolve()
    if target == root or root.is_relative_to(target) or target.is_relative_to(root):
        raise ExportError(f"{output} is, contains or lies inside the workspace {workspace.root}",
                          "export to a folder outside the workspace")
    inside = next((parent for parent in (target, *target.parents) if is_workspace(parent)), None)
    if inside is not None:
        raise ExportError(f"{output} is or lies inside the workspace {inside}", "export to a folder outside it")
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise ExportError(f"{output} exists", "choose another folder or pass --overwrite to replace an earlier export")
    if not output.is_dir() or output.is_symlink() or not (output / EXPORT_MARKER).is_file():
        raise ExportError(f"{output} exists and is not a folder fercurate exported (it has no {EXPORT_MARKER})",
                          "--overwrite replaces only earlier exports: choose another folder or remove it yourself")


def _remove_stale_staging(output: Path) -> None:
    """Delete staging and old-output folders that a killed export to ``output`` left behind."""
    for leftover in output.parent.glob(f".{output.name}.*"):
        _, marker, rest = leftover.name.partition(_STAGING if _STAGING in leftover.name else _OLD)
        pid = rest.split("-", 1)[0]
        if marker and pid.isdigit() and not _process_alive(int(pid)) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_folder(staging: Path, output: Path) -> None:
    """Put ``staging`` at ``output``; an old output is moved aside first and removed last."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}{_OLD}{os.getpid()}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_NESTED_COLUMNS = [name for name, kind in zip(ROW_SCHEMA.names, ROW_SCHEMA.types) if pa.types.is_nested(kind)
                   and name != "flags"]
_PLAN_COLUMNS = ("manifest_row", "leakage_group", "excluded_reason")


def exported_table(manifest: pa.Table, rows: pd.DataFrame) -> pa.Table:
    """The exported rows as Arrow, every schema column in its own type (nested ones included),
    with the curated ``split`` and any columns the plan added (``fold``)."""
    table = manifest.take(pa.array(rows["manifest_row"].to_numpy()))
    table = table.set_column(table.schema.get_field_index("split"), "split",
                             pa.array(rows["split"].tolist(), pa.string()))
    for name in rows.columns:
        if name not in table.column_names and name not in _PLAN_COLUMNS:
            table = table.append_column(name, pa.array(rows[name].tolist()))
    return table


def hf_compatible(table: pa.Table) -> pa.Table:
    """``table`` with every map column turned into types Hugging Face ``datasets`` holds: a map
    with string keys becomes a struct with one field per key (FER+'s vote names always, so every
    export has the same columns, then any other key seen), any other map a list of
    ``{key, value}`` structs."""
    for index, (name, kind) in enumerate(zip(table.column_names, table.schema.types)):
        if not pa.types.is_map(kind):
            continue
        column = table[name].combine_chunks()
        if pa.types.is_string(kind.key_type):
            keys = list(dict.fromkeys([*VOTE_COLUMNS, *column.keys.unique().to_pylist()]))
            values = [pc.map_lookup(column, pa.scalar(key, kind.key_type), "first") for key in keys]
            converted = pa.StructArray.from_arrays(values, names=keys, mask=column.is_null())
        else:
            entry = pa.struct([pa.field("key", kind.key_type), pa.field("value", kind.item_type)])
            converted = pa.ListArray.from_arrays(column.offsets, pa.StructArray.from_arrays(
                [column.keys, column.items], fields=list(entry)), mask=column.is_null())
        table = table.set_column(index, name, converted)
    return table


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _file_name(row_id: str) -> str:
    return row_id.replace("/", "__").replace(":", "_") + ".png"


def write_imagefolder(workspace: Workspace, table: pa.Table, out: Path) -> dict[str, Any]:
    """``imagefolder/<split>/<label>/<id>.png`` (hard links into the workspace where possible)."""
    rows = table.select(["id", "split", "label"]).to_pandas()
    for row, face in zip(rows.itertuples(index=False), face_filepaths(table), strict=True):
        _link_or_copy(workspace.root / face, out / "imagefolder" / row.split / row.label / _file_name(row.id))
    return {"images": len(rows)}


def write_hf(workspace: Workspace, table: pa.Table, out: Path) -> dict[str, Any]:
    """A ``DatasetDict`` saved with ``save_to_disk`` plus one parquet file per split."""
    import datasets

    datasets.disable_progress_bars()
    table = hf_compatible(table)
    splits = {}
    for name in SPLITS:
        part = table.filter(pc.equal(table["split"], name))
        if not part.num_rows:
            continue
        images = [str(workspace.root / path) for path in face_filepaths(part)]
        dataset = datasets.Dataset(part).cast_column("label", datasets.ClassLabel(names=list(CANONICAL_LABELS)))
        dataset = dataset.add_column("image", images).cast_column("image", datasets.Image())
        splits[name] = dataset
    dataset_dict = datasets.DatasetDict(splits)
    dataset_dict.save_to_disk(str(out / "hf"))
    (out / "parquet").mkdir()
    for name, dataset in dataset_dict.items():
        dataset.to_parquet(str(out / "parquet" / f"{name}.parquet"))
    return {"splits": {name: len(dataset) for name, dataset in dataset_dict.items()}}


def write_fer2013_csv(workspace: Workspace, table: pa.Table, out: Path) -> dict[str, Any]:
    """``fer2013.csv`` with 48x48 gray pixels; contempt has no FER2013 code and is counted out."""
    rows = table.select(["label", "split"]).to_pandas().assign(filepath=face_filepaths(table))
    usable = rows[rows["label"].isin(FER2013_CODES)]
    with open(out / "fer2013.csv", "w") as handle:
        handle.write("emotion,pixels,Usage\n")
        for row in usable[["filepath", "label", "split"]].itertuples(index=False):
            image = cv2.imread(str(workspace.root / row.filepath), cv2.IMREAD_GRAYSCALE)
            if image.shape != (48, 48):
                image = cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)
            handle.write(f"{FER2013_CODES[row.label]},{' '.join(map(str, image.ravel().tolist()))},"
                         f"{FER2013_USAGE[row.split]}\n")
    return {"rows": len(usable), "left_out_no_fer2013_code": int(len(rows) - len(usable))}


def write_manifest(workspace: Workspace, table: pa.Table, out: Path) -> dict[str, Any]:
    """The exported rows with their split: parquet (every column in the schema's own types) and
    CSV (flat columns, votes flattened to ``label_votes.<key>``; lists such as landmarks left out)."""
    pq.write_table(table, out / "manifest.parquet")
    flat = hf_compatible(table).flatten()
    flat = flat.select([name for name, kind in zip(flat.column_names, flat.schema.types)
                        if not pa.types.is_nested(kind)])
    pacsv.write_csv(flat, out / "manifest.csv")
    return {"rows": table.num_rows}


def write_fiftyone(workspace: Workspace, table: pa.Table, out: Path) -> dict[str, Any]:
    """A FiftyOne dataset export (``fiftyone.types.FiftyOneDataset``) of the exported rows, with
    their split as a field and a tag."""
    from fercurate.audit.fiftyone_sync import export_fiftyone_dataset

    return export_fiftyone_dataset(workspace, table["id"].to_pylist(), table["split"].to_pylist(), out / "fiftyone")


def write_card(workspace: Workspace, report: ExportReport, options: ExportOptions, notes: Mapping[str, Any],
               out: Path) -> None:
    """``README.md``: a Hugging Face dataset card (YAML metadata + Markdown) for the export."""
    from huggingface_hub import DatasetCard, DatasetCardData

    rows = report.rows
    sources = sorted(rows["source"].unique())
    count = len(rows)
    size = next(name for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                                         (float("inf"), "100K<n<1M")) if count < limit)
    card_data = DatasetCardData(
        license="other", task_categories=["image-classification"], size_categories=size,
        pretty_name=f"fercurate export of {workspace.root.resolve().name}", tags=["facial-expression-recognition",
                                                                                "fercurate", *sources])
    per_split = rows.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(
        index=[label for label in CANONICAL_LABELS if label in set(rows["label"])],
        columns=[name for name in SPLITS if name in set(rows["split"])])
    demographics = {column: rows.groupby([column, f"{column}_source"]).size().rename("rows").reset_index()
                    for column in ("gender", "age_group", "ethnicity")}
    estimated = {column: int(rows[f"{column}_source"].str.startswith("estimated:").sum())
                 for column in ("gender", "age_group", "ethnicity")}
    synthetic = rows.groupby("label")["is_synthetic"].mean().round(4)
    generators = sorted(rows.loc[rows["is_synthetic"], "generator"].dropna().unique())
    label_sources = rows.groupby(["source", "label_source"]).size().rename("rows").reset_index()
    aligned = rows.assign(aligned=rows["aligned_filepath"].notna()).groupby("source")["aligned"].agg(["size", "sum"])
    votes = report.table["label_votes"] if report.table is not None else pa.nulls(0)
    with_votes = int(len(votes) - votes.null_count)
    audit_summary = _audit_summary(workspace)
    template = resources.files("fercurate.dataset_cards").joinpath("template.md").read_text()
    source_cards = {source: _source_card_excerpt(source) for source in sources}
    card = DatasetCard.from_template(
        card_data, template_str=template, sources=sources, source_cards=source_cards,
        options=json.loads(options.model_dump_json()), split_report=report.split_report,
        balance_report=report.balance_report, excluded=report.excluded,
        class_table=per_split.to_markdown(), total=count, notes=notes,
        demographic_tables={name: table.to_markdown(index=False) for name, table in demographics.items()},
        synthetic_table=synthetic.to_frame("synthetic share").to_markdown(), generators=generators,
        label_source_table=label_sources.to_markdown(index=False), label_modes=_label_modes(rows),
        rows_with_votes=with_votes, reviews=review_summary(read_reviews(workspace)),
        estimated_demographics={column: count for column, count in estimated.items() if count},
        aligned_rows=int(aligned["sum"].sum()),
        aligned_table=aligned.rename(columns={"size": "rows", "sum": "aligned faces"}).to_markdown(),
        audit=audit_summary)
    card.save(str(out / "README.md"))


def _label_modes(rows: pd.DataFrame) -> list[str]:
    """The FER+ label modes behind the exported labels, in words (none when FER+ was not used)."""
    modes = {source.removeprefix("ferplus-") for source in rows["label_source"].unique() if source.startswith("ferplus-")}
    flagged = rows["flags"].map(lambda flags: flags is not None and any(f.startswith("ferplus-") for f in flags))
    if not modes and flagged.any():
        modes = {"original"}
    return sorted(modes)


def _audit_summary(workspace: Workspace) -> dict[str, Any] | None:
    path = workspace.root / "audit" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _source_card_excerpt(source: str) -> str:
    """The 'Known issues' section of a source's card in dataset_cards/, if it has one."""
    cards = resources.files("fercurate.dataset_cards")
    card = cards.joinpath(f"{source}.md")
    if not card.is_file():
        return ""
    text = card.read_text()
    start = text.find("## Known issues")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start + len("## Known issues"):end if end > 0 else None].strip()

