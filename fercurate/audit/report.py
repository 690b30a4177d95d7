"""The audit report: Markdown and HTML with tables and plots, in ``<workspace>/audit/``.

Plots are what a person would rather look at than read: class balance per split, quality
histograms with their thresholds, and contact sheets of the duplicate groups that leak or
disagree and of the most likely mislabelled faces.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd

from fercurate.audit.balance import ALL_LABELS, synthetic_share_grid
from fercurate.audit.label_noise import ferplus_precision_table
from fercurate.audit.quality import ferplus_face_table
from fercurate.audit.result import AuditResult

if TYPE_CHECKING:
    from fercurate.workspace import Workspace

_GROUPS_SHOWN = 12
_MEMBERS_SHOWN = 6
_ISSUES_SHOWN = 40


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_balance(per_split: pd.DataFrame, target: Path) -> None:
    """Grouped bars: rows per label, one colour per split."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4))
    per_split.T.plot.bar(ax=axis, width=0.8)
    axis.set_ylabel("images")
    axis.set_title("class balance per split")
    axis.legend(title="split")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def plot_demographics(cells: dict[str, pd.DataFrame], target: Path) -> None:
    """One heat map per crossed column: faces per label x value in the largest split, thin cells
    outlined in red, so the gaps a rebalance should fill stand out."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4), squeeze=False)
    for axis, (column, table) in zip(axes[0], cells.items()):
        if table.empty:
            axis.set_axis_off()
            continue
        split = table.groupby("split")["rows"].sum().idxmax()
        part = table[table["split"] == split]
        grid = part.pivot(index="label", columns="value", values="rows").reindex(part["label"].unique())
        thin = part.pivot(index="label", columns="value", values="thin").reindex(grid.index)[grid.columns]
        axis.imshow(grid.to_numpy(), cmap="Blues", aspect="auto")
        for (y, x), count in np.ndenumerate(grid.to_numpy()):
            axis.text(x, y, str(count), ha="center", va="center", fontsize=8,
                      color="red" if thin.to_numpy()[y, x] else "black")
        axis.set_xticks(range(len(grid.columns)), grid.columns, rotation=30)
        axis.set_yticks(range(len(grid.index)), grid.index)
        axis.set_title(f"label x {column} ({split}; red: thin cells)")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def plot_quality(rows: pd.DataFrame, thresholds: dict[str, float], target: Path) -> None:
    """Histograms of brightness, contrast and blur, with the thresholds that flag images."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("brightness", [thresholds["dark_mean"], thresholds["bright_mean"]]),
              ("contrast", [thresholds["blank_std"]]), ("blur", [thresholds["blur_variance"]])]
    for axis, (column, lines) in zip(axes, panels):
        values = rows[column].to_numpy()
        log = column == "blur"
        bins = np.logspace(0, np.log10(max(values.max(), 10)), 60) if log else 60
        axis.hist(np.maximum(values, 1) if log else values, bins=bins, color="#4c72b0")
        if log:
            axis.set_xscale("log")
        for line in lines:
            axis.axvline(max(line, 1) if log else line, color="#c44e52", linestyle="--")
        axis.set_title(column + (" (variance of Laplacian)" if log else ""))
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def _thumbnail(workspace: Workspace, filepath: str, side: int = 64) -> np.ndarray:
    image = cv2.imread(str(workspace.root / filepath), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return np.zeros((side, side), np.uint8)
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def contact_sheet(workspace: Workspace, rows_of_tiles: list[list[tuple[str, str]]], title: str,
                  target: Path) -> None:
    """A grid of faces, each captioned; ``rows_of_tiles`` holds (filepath, caption) per tile."""
    plt = _pyplot()
    columns = max((len(row) for row in rows_of_tiles), default=1)
    figure, axes = plt.subplots(len(rows_of_tiles) or 1, columns, figsize=(1.35 * columns, 1.55 * max(1, len(rows_of_tiles))),
                                squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for r, row in enumerate(rows_of_tiles):
        for c, (filepath, caption) in enumerate(row):
            axes[r][c].imshow(_thumbnail(workspace, filepath), cmap="gray", vmin=0, vmax=255)
            axes[r][c].set_title(caption, fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / max(1, len(rows_of_tiles))))
    figure.savefig(target, dpi=110)
    plt.close(figure)


def _table(frame: pd.DataFrame, markdown: bool) -> str:
    return frame.to_markdown() if markdown else frame.to_html(border=0, classes="table")


def write_report(workspace: Workspace, result: AuditResult, directory: Path) -> None:
    """Write plots, ``report.md`` and ``report.html`` into ``directory``."""
    summary = result.summary
    rows = result.rows
    manifest = workspace.manifest().select(["id", "filepath"])
    filepaths = dict(zip(manifest["id"].to_pylist(), manifest["filepath"].to_pylist()))
    plot_class_balance(result.balance["per_split"], directory / "class_balance.png")
    plot_quality(rows, summary["options"]["thresholds"], directory / "quality.png")
    plot_demographics(result.balance["demographic_cells"], directory / "demographics.png")

    shown = result.groups[result.groups["cross_split"] | result.groups["conflicting_labels"]]
    shown = shown.sort_values(["conflicting_labels", "size"], ascending=False).head(_GROUPS_SHOWN)
    split_label = dict(zip(rows["id"], rows["split"] + "\n" + rows["label"]))
    contact_sheet(workspace, [[(filepaths[i], split_label[i]) for i in ids[:_MEMBERS_SHOWN]] for ids in shown["ids"]],
                  "duplicate groups that cross splits or disagree on the label (one group per row)",
                  directory / "duplicates.png")
    issues = result.label_issues.head(_ISSUES_SHOWN)
    tiles = [(filepaths[row.id], f"{row.label}\n-> {row.predicted_label} {row.predicted_probability:.2f}")
             for row in issues.itertuples()]
    contact_sheet(workspace, [tiles[i:i + 8] for i in range(0, len(tiles), 8)],
                  "most likely mislabelled: given -> suggested (model probability)", directory / "mislabelled.png")

    for markdown, name in ((True, "report.md"), (False, "report.html")):
        text = _render(result, shown, issues, markdown)
        (directory / name).write_text(text)


def _render(result: AuditResult, shown: pd.DataFrame, issues: pd.DataFrame, markdown: bool) -> str:
    summary = result.summary
    parts: list[str] = []

    def heading(text: str) -> None:
        anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")  # report.html#label-noise links here
        parts.append(f"## {text}\n" if markdown else f'<h2 id="{anchor}">{html.escape(text)}</h2>')

    def paragraph(text: str) -> None:
        parts.append(text + "\n" if markdown else f"<p>{html.escape(text)}</p>")

    def image(name: str, alt: str) -> None:
        parts.append(f"![{alt}]({name})\n" if markdown else f'<img src="{name}" alt="{html.escape(alt)}">')

    def table(frame: pd.DataFrame) -> None:
        parts.append(_table(frame, markdown) + "\n")

    parts.append("# fercurate audit\n" if markdown else
                 "<!doctype html><meta charset=utf-8><title>fercurate audit</title><style>body{font-family:sans-serif;"
                 "max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}"
                 "img{max-width:100%}</style><h1>fercurate audit</h1>")
    paragraph(f"{summary['rows']} images audited. Times (s): "
              + ", ".join(f"{step} {value}" for step, value in result.seconds.items()) + ".")
    heading("Class balance")
    table(result.balance["per_split"].assign(imbalance_ratio=result.balance["imbalance_ratio"]))
    image("class_balance.png", "class balance per split")
    heading("Synthetic share")
    shares = result.balance["synthetic_share"]
    synthetic = int(shares.loc[shares["label"] == ALL_LABELS, "synthetic"].sum())
    if synthetic:
        paragraph(f"{synthetic} synthetic images. Per class and split, splits as `fercurate export` assigns them: "
                  "synthetic / images (share).")
        table(synthetic_share_grid(shares))
    else:
        paragraph("No synthetic images.")
    if len(result.balance["per_subject"]):
        heading("Subjects")
        table(result.balance["per_subject"])
    heading("Demographics")
    paragraph("Perceived gender and age group are a model's estimate where the source does not document them "
              "(provenance estimated:<model>): a measure of balance, not anyone's identity.")
    for column, facts in summary["balance"]["demographics"].items():
        paragraph(f"{column}: {facts['unknown_share']:.1%} unknown.")
        table(pd.DataFrame(facts["values"]))
    for column, cells in result.balance["demographic_cells"].items():
        thin = cells[cells["thin"]]
        paragraph(f"label x {column}: faces per split, label and value (share of the label; share estimated). "
                  f"{len(thin)} thin cells (known value, fewer than 20 faces)"
                  + (": " + ", ".join(f"{row.label} x {row.value} in {row.split} ({row.rows})"
                                      for row in thin.head(12).itertuples()) if len(thin) else "") + ".")
        table(cells.pivot_table(index=["split", "label"], columns="value", values="rows", aggfunc="sum"))
    image("demographics.png", "label x gender and label x age group")
    heading("Quality")
    table(pd.DataFrame([summary["quality"]]))
    faces = summary.get("faces_against_ferplus")
    if faces:
        paragraph(f"Face checks against FER+ ({faces['ferplus_non_faces']} images it excluded or called not a face): "
                  "*not a face* is the audit's flag; *face not found* holds every face the detector missed too.")
        table(ferplus_face_table(faces))
    image("quality.png", "quality histograms")
    heading("Duplicates and leakage")
    duplicates = summary["duplicates"]
    paragraph(f"{duplicates['exact_duplicate_images']} exact duplicate images in {duplicates['exact_groups']} groups; "
              f"{duplicates['near_groups']} near-duplicate groups (pHash distance <= {duplicates['max_distance']}) "
              f"holding {duplicates['rows_in_near_groups']} images; {duplicates['groups_across_splits']} groups span "
              f"splits (leakage) and {duplicates['groups_with_conflicting_labels']} disagree on the label.")
    if len(shown):
        table(shown[["size", "splits", "labels", "ids"]].assign(ids=shown["ids"].map(lambda ids: ", ".join(ids[:4]))))
        image("duplicates.png", "duplicate groups across splits or with conflicting labels")
    heading("Label noise")
    noise = summary["label_noise"]
    if noise["ran"]:
        paragraph(f"Probabilities: {noise['method']}; cross-validated accuracy {noise['cross_validated_accuracy']:.1%}. "
                  f"{noise['flagged']} of {noise['audited_rows']} images flagged as likely mislabelled.")
        check = noise.get("ferplus_check")
        if check and "precision_at" in check:
            paragraph(f"Checked against FER+'s crowd ({check['rows_with_votes']} images with votes): how often the FER+ "
                      "majority (and a strict majority, over half the votes) disputes the label, at the top of the "
                      "ranking and over all images.")
            table(ferplus_precision_table(check))
        elif check:
            paragraph(f"FER+ check: {check['note']}.")
        table(issues.head(25))
        image("mislabelled.png", "most likely mislabelled images")
    else:
        paragraph("Not run (--no-label-noise).")
    return "\n".join(parts)
