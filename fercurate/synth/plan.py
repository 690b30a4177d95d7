"""The rebalance plan: how many new faces each class of the training split needs, by which method.

The training split is the one ``fercurate export`` would write with the same :class:`SplitOptions`
(``plan_export``'s rows whose split is ``train``), counting real rows only: synthetic rows already in
the workspace never count towards the real base. Invariants of a plan, per class:
``kept = real - dropped``, ``target = kept + sum(new)``, and ``sum(new) / target <= max_synthetic_share``.

Targets: ``uniform`` (every class as large as the largest), ``uniform:N`` (every class exactly N:
larger ones subsampled), ``min:N`` (every class at least N, larger ones kept whole), ``cap:N`` (every
class as large as the largest but at most N: larger ones subsampled), ``label=share,...`` (these
proportions among the named classes, no named class subsampled; unnamed classes unchanged).

By group (``by="gender"`` or ``"age_group"``): the classes are the label x value cells of that column
(e.g. ``disgust x female``), so a target such as ``min:300`` raises every thin cell, not only every
thin label; faces whose value is ``unknown`` are in no cell: never dropped, never parents. A synthetic
face inherits its parent's demographic values, so it lands in the cell it was made for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from fercurate.errors import OptionError
from fercurate.schema import CANONICAL_LABELS, UNKNOWN
from fercurate.splits import SplitOptions
from fercurate.workspace import Workspace

Method = Literal["augment", "cgan", "ddpm"]  # occlusion augmentation, or a generator kind
GroupColumn = Literal["gender", "age_group"]
GROUP_COLUMNS: tuple[str, ...] = get_args(GroupColumn)
TARGET_HELP = "uniform, uniform:N, min:N, cap:N or label=share,... (e.g. disgust=1,happiness=1)"


@dataclass
class ClassPlan:
    """One class of the plan: a label, or a label x group cell when the plan is ``by`` a demographic
    column (``group`` is then that column's value)."""

    label: str
    real: int
    target: int
    new: dict[str, int]
    dropped: int
    group: str | None = None

    @property
    def name(self) -> str:
        return self.label if self.group is None else f"{self.label} x {self.group}"

    @property
    def synthetic_share(self) -> float:
        return sum(self.new.values()) / self.target if self.target else 0.0


@dataclass
class RebalancePlan:
    """New faces per class and method; ``drop_ids`` are real training rows subsampled away to meet
    the target (``synthesize`` flags them ``rebalance-drop`` and export leaves them out); ``train``
    holds the real training rows (id, label, ...)."""

    target: str
    methods: tuple[str, ...]
    max_synthetic_share: float
    classes: list[ClassPlan]
    drop_ids: list[str] = field(default_factory=list)
    train: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    by: GroupColumn | None = None
    outside_cells: int = 0  # with ``by``: training faces whose value is unknown

    @property
    def total_new(self) -> int:
        return sum(sum(row.new.values()) for row in self.classes)

    def new_per_class(self, method: str) -> dict[str, int]:
        return {row.name: row.new.get(method, 0) for row in self.classes}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "methods": list(self.methods), "max_synthetic_share": self.max_synthetic_share,
                "by": self.by, "outside_cells": self.outside_cells, "total_new": self.total_new, "dropped": len(self.drop_ids),
                "classes": [{"label": row.label, **({"group": row.group} if self.by else {}), "real": row.real,
                             "dropped": row.dropped, "target": row.target, "new": row.new,
                             "synthetic_share": round(row.synthetic_share, 4)} for row in self.classes]}


def parse_target(target: str) -> tuple[str, int | dict[str, float] | None]:
    """``(kind, argument)`` of a target string, or an :class:`OptionError` naming the forms."""
    text = target.strip()
    if text == "uniform":
        return "uniform", None
    if "=" in text:
        shares: dict[str, float] = {}
        for part in text.split(","):
            label, _, value = part.partition("=")
            label = label.strip()
            if label not in CANONICAL_LABELS:
                raise OptionError(f"--target names {label!r}, which is not an emotion", f"use {', '.join(CANONICAL_LABELS)}")
            try:
                shares[label] = float(value)
            except ValueError:
                raise OptionError(f"--target share {value!r} of {label} is not a number", f"use {TARGET_HELP}") from None
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise OptionError("--target shares must be non-negative and not all zero", f"use {TARGET_HELP}")
        return "shares", shares
    kind, _, number = text.partition(":")
    if kind in ("uniform", "min", "cap") and number.strip().isdigit() and int(number) > 0:
        return kind, int(number)
    raise OptionError(f"unknown --target {target!r}", f"use {TARGET_HELP}")


def class_targets(real: pd.Series, target: str) -> pd.Series:
    """Target count per class (index: labels with training rows)."""
    kind, argument = parse_target(target)
    if kind == "uniform":
        return pd.Series(int(real.max()) if argument is None else argument, index=real.index)
    if kind == "min":
        return real.clip(lower=argument)
    if kind == "cap":
        return pd.Series(min(int(real.max()), argument), index=real.index)
    shares = pd.Series(argument, dtype=float)
    unknown = sorted(set(shares.index) - set(real.index))
    if unknown:
        raise OptionError(f"--target names classes with no training rows: {unknown}", f"name some of {sorted(real.index)}")
    named = shares[shares > 0]
    total = (real.reindex(named.index) / (named / named.sum())).max()  # no named class subsampled
    targets = real.copy()
    targets[named.index] = np.maximum(real[named.index], np.round(named / named.sum() * total)).astype(int)
    return targets


def _cells(train: pd.DataFrame, by: GroupColumn | None) -> tuple[pd.Series, dict[str, tuple[str, str | None]]]:
    """Each training row's cell name (NaN for rows in no cell) and the cells in canonical order:
    labels, or label x value of ``by`` for known values (a face of unknown gender is in no cell)."""
    if by is None:
        order = [label for label in CANONICAL_LABELS if label in set(train["label"])]
        return train["label"], {label: (label, None) for label in order}
    if by not in GROUP_COLUMNS:
        raise OptionError(f"--by {by!r} is not a demographic column the plan can balance", f"use {' or '.join(GROUP_COLUMNS)}")
    known = train[by].notna() & (train[by] != UNKNOWN)
    if not known.any():
        raise OptionError(f"no training row has a known {by}",
                          "run `fercurate audit --estimate gender,age_group`, or give a sidecar with --demographics")
    pairs = sorted({(label, value) for label, value in zip(train.loc[known, "label"], train.loc[known, by])},
                   key=lambda pair: (CANONICAL_LABELS.index(pair[0]), str(pair[1])))
    cells = {f"{label} x {value}": (label, value) for label, value in pairs}
    return (train["label"] + " x " + train[by].astype(str)).where(known), cells


def plan_from_counts(train: pd.DataFrame, *, target: str, methods: tuple[str, ...] = ("augment",),
                     max_synthetic_share: float = 0.5, seed: int = 0, by: GroupColumn | None = None) -> RebalancePlan:
    """The plan for real training rows ``train`` (columns ``id``, ``label``, and ``by``'s column when
    given). With ``by``, the classes are label x value cells of that column (faces whose value is
    unknown are neither dropped nor parents), and the target applies to cells."""
    if not 0 <= max_synthetic_share < 1:
        raise OptionError(f"--max-synthetic-share {max_synthetic_share} is outside [0, 1)", "give e.g. 0.5")
    if not methods:
        raise OptionError("no synthesis method given", "give --method augment")
    if train.empty:
        raise OptionError("the workspace has no real training rows to rebalance", "ingest a dataset first")
    kind, _ = parse_target(target)
    if by is not None and kind == "shares":
        raise OptionError(f"--target {target} gives shares of labels, which --by {by} cannot split into cells",
                          "with --by use uniform, uniform:N, min:N or cap:N")
    cell_of, cells = _cells(train, by)
    real = cell_of.value_counts().reindex(list(cells))
    targets = class_targets(real, target)
    kept = np.minimum(real, targets)
    new = targets - kept
    reachable = np.floor(kept / (1 - max_synthetic_share) + 1e-9).astype(int)
    short = targets > reachable
    if short.any():
        worst = ", ".join(f"{name} ({int(real[name])} real -> at most {int(reachable[name])})" for name in real.index[short])
        best = f"uniform:{int(reachable.min())}" if kind != "shares" else "smaller shares for those classes"
        raise OptionError(f"--target {target} cannot be met with at most {max_synthetic_share:.0%} synthetic faces "
                          f"per class: {worst}",
                          f"the largest reachable uniform target is {best}; or raise --max-synthetic-share")
    drop_ids: list[str] = []
    for position, name in enumerate(real.index):  # a seeded order per cell: a smaller target drops a superset
        if real[name] <= targets[name]:
            continue
        ids = np.sort(train.loc[cell_of == name, "id"].to_numpy())
        order = np.random.default_rng([seed, CANONICAL_LABELS.index(cells[name][0]), position]).permutation(len(ids))
        drop_ids += sorted(ids[order[: int(real[name] - targets[name])]].tolist())
    classes = []
    for name, (label, group) in cells.items():
        shares = np.full(len(methods), int(new[name]) // len(methods))
        shares[: int(new[name]) % len(methods)] += 1
        classes.append(ClassPlan(label, int(real[name]), int(targets[name]), dict(zip(methods, map(int, shares))),
                                 int(real[name] - kept[name]), group))
    return RebalancePlan(target, tuple(methods), max_synthetic_share, classes, drop_ids,
                         train.reset_index(drop=True), by, int(cell_of.isna().sum()))


def training_rows(workspace: Workspace, split: SplitOptions | None = None) -> pd.DataFrame:
    """The real rows export would put in the training split (all plan columns)."""
    from fercurate.export import ExportOptions, plan_export

    rows, _, _, _ = plan_export(workspace, ExportOptions(split=split or SplitOptions(), apply_rebalance_drops=False))
    return rows[(rows["split"] == "train") & ~rows["is_synthetic"].astype(bool)].reset_index(drop=True)


def plan_rebalance(workspace: Workspace, *, target: str, methods: tuple[str, ...] = ("augment",),
                   max_synthetic_share: float = 0.5, split: SplitOptions | None = None,
                   by: GroupColumn | None = None) -> RebalancePlan:
    """The rebalance plan for the workspace's training split (as ``fercurate export`` splits it),
    per label or, ``by`` a demographic column, per label x value cell."""
    split = split or SplitOptions()
    return plan_from_counts(training_rows(workspace, split), target=target, methods=methods,
                            max_synthetic_share=max_synthetic_share, seed=split.seed, by=by)
