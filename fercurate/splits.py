"""Leakage-free splits: which rows train, validate and test, and which may not be used at all.

Rows that must never be separated form one *leakage group*: the images of one subject (CK+,
JAFFE), the members of an exact or near-duplicate group, and every derived row with its parent.
A split assignment is leakage-free when every group sits in one split and every synthetic row is
in the training split; :func:`leakage_violations` checks exactly that, and the tests use it.

Strategies:

- ``official``: rows keep their source's split where it has one (FER2013 Training / PublicTest /
  PrivateTest -> train / validation / test). A group that spans official splits sits in the most
  protected one (test, then validation); its members from other splits are *excluded* (they are
  copies of evaluation images), never moved into an evaluation set. Rows without an official
  split are assigned as in ``grouped``.
- ``grouped``: stratified by label, grouped by leakage group (scikit-learn's
  StratifiedGroupKFold; ``folds`` gives the train:validation:test proportion in folds).

Under either strategy a synthetic row whose group holds no real row (a face a generator made,
with no parent) trains: its generator learnt from training faces only, and it may not evaluate.

:func:`subject_folds` gives k subject-independent folds for small datasets (CK+, JAFFE).
"""

from __future__ import annotations

import warnings

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.model_selection import StratifiedGroupKFold

from fercurate.audit.duplicates import components
from fercurate.errors import OptionError

SPLITS = ("train", "validation", "test")
#: The flag ``fercurate synthesize`` sets on real training rows its rebalance plan subsamples away
#: (``cap:N``, ``uniform:N``); export leaves them and their derived rows out of the training split.
REBALANCE_DROP_FLAG = "rebalance-drop"
OFFICIAL_SPLITS: dict[str, str] = {
    "Training": "train", "PublicTest": "validation", "PrivateTest": "test",
    "train": "train", "validation": "validation", "test": "test",
}
_PROTECTION = {"train": 0, "validation": 1, "test": 2}


class SplitOptions(BaseModel):
    """How to split."""

    strategy: Literal["official", "grouped"] = "official"
    folds: tuple[int, int, int] = Field((8, 1, 1), description="train:validation:test, in folds")
    seed: int = 0


@dataclass
class SplitAssignment:
    """Per row (aligned with the input): its split (None when excluded), why it was excluded,
    and its leakage group."""

    split: np.ndarray
    excluded_reason: np.ndarray
    group: np.ndarray
    report: dict[str, object] = field(default_factory=dict)


def leakage_groups(rows: pd.DataFrame, near_group: np.ndarray | None = None) -> np.ndarray:
    """Leakage group of each row: connected components of same subject, same pixels (sha1), same
    near-duplicate group (from the audit, when given) and parent -> child links."""
    count = len(rows)
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []

    def link_equal(keys: pd.Series) -> None:
        valid = keys.notna().to_numpy()
        codes = np.full(count, -1)
        codes[valid] = pd.factorize(keys[valid])[0]
        order = np.flatnonzero(valid)
        if not len(order):
            return
        first_of_code = pd.Series(order).groupby(codes[order]).transform("first").to_numpy()
        firsts.append(first_of_code)
        seconds.append(order)

    subject = rows["subject_id"]
    link_equal((rows["source"].astype(str) + "/" + subject.astype(str)).where(subject.notna()))
    link_equal(rows["sha1"])
    if near_group is not None:
        link_equal(pd.Series(np.where(near_group >= 0, near_group, np.nan)))
    position = pd.Series(np.arange(count), index=rows["id"].to_numpy())
    parents = rows["parent_id"].map(position)
    has_parent = parents.notna().to_numpy()
    firsts.append(parents[has_parent].to_numpy(dtype=np.int64))
    seconds.append(np.flatnonzero(has_parent))
    groups = components(count, np.concatenate(firsts), np.concatenate(seconds))
    singletons = groups < 0
    groups[singletons] = groups.max(initial=-1) + 1 + np.arange(singletons.sum())
    return groups


def assign_splits(rows: pd.DataFrame, groups: np.ndarray, options: SplitOptions | None = None) -> SplitAssignment:
    """Assign every row to train / validation / test (or exclude it) without leakage."""
    options = options or SplitOptions()
    count = len(rows)
    split = np.full(count, None, dtype=object)
    reason = np.full(count, None, dtype=object)
    official = rows["source_split"].map(OFFICIAL_SPLITS).to_numpy(dtype=object)
    synthetic = rows["is_synthetic"].to_numpy(dtype=bool)
    generated = synthetic & ~pd.Series(~synthetic).groupby(groups).transform("any").to_numpy()
    split[generated] = "train"
    if options.strategy == "official":
        has_official = pd.notna(official)
        protection = np.where(has_official, pd.Series(official).map(_PROTECTION).fillna(-1).to_numpy(), -1)
        group_level = pd.Series(protection).groupby(groups).transform("max").to_numpy()
        levels = {value: name for name, value in _PROTECTION.items()}
        in_official_group = group_level >= 0
        split[in_official_group] = [levels[int(level)] for level in group_level[in_official_group]]
        leaking = has_official & (protection < group_level)
        reason[leaking] = [f"duplicate of a {levels[int(level)]} image" for level in group_level[leaking]]
        split[leaking] = None
        unassigned = ~in_official_group & ~generated
    else:
        unassigned = ~generated
    notes = []
    if unassigned.any():
        split[unassigned] = _grouped_stratified(rows["label"].to_numpy()[unassigned], groups[unassigned], options)
        distinct = len(np.unique(groups[unassigned]))
        if distinct < sum(options.folds):
            notes.append(f"{int(unassigned.sum())} rows without an official split form only {distinct} leakage "
                         f"groups (subjects), fewer than the {sum(options.folds)} folds: all kept in train")
    in_train = (split == "train") & ~generated
    if options.strategy == "official" and not (split == "validation").any() and in_train.any():
        # Official splits without a validation split (a hub dataset's train/test): hold out
        # whole training groups for model selection, so the test split is still touched once.
        train_folds, validation_folds, _ = options.folds
        held_out = _grouped_stratified(rows["label"].to_numpy()[in_train], groups[in_train],
                                       options.model_copy(update={"folds": (train_folds, validation_folds, 0)}))
        split[in_train] = held_out
        notes.append(f"the official splits have no validation split: {int((held_out == 'validation').sum())} "
                     "training rows (whole leakage groups) were held out as validation")
    evaluated = synthetic & pd.notna(split) & (split != "train")  # synthetic faces only ever train
    reason[evaluated] = "synthetic row whose group is in an evaluation split"
    split[evaluated] = None
    report = {
        "strategy": options.strategy,
        "rows": count,
        "per_split": {name: int((split == name).sum()) for name in SPLITS},
        "excluded": pd.Series(reason[pd.notna(reason)]).value_counts().to_dict(),
        "leakage_groups": int(len(np.unique(groups))),
        "notes": notes,
    }
    return SplitAssignment(split, reason, groups, report)


def _grouped_stratified(labels: np.ndarray, groups: np.ndarray, options: SplitOptions) -> np.ndarray:
    """Split names for rows without an official split: whole groups, label proportions kept."""
    train_folds, validation_folds, test_folds = options.folds
    total = train_folds + validation_folds + test_folds
    distinct_groups = len(np.unique(groups))
    if distinct_groups < total:  # too few groups to fold: everything trains
        return np.full(len(labels), "train", dtype=object)
    fold = np.empty(len(labels), np.int64)
    if np.unique(labels, return_counts=True)[1].max() < total:
        # Too few faces per class to stratify (a small CK+ or JAFFE sample): whole groups are
        # dealt to folds in a seeded random order instead, so the split still never leaks.
        unique_groups, group_of_row = np.unique(groups, return_inverse=True)
        order = np.random.default_rng(options.seed).permutation(len(unique_groups))
        fold = (np.argsort(order) % total)[group_of_row]
    else:
        splitter = StratifiedGroupKFold(n_splits=total, shuffle=True, random_state=options.seed)
        with warnings.catch_warnings():  # a class smaller than the fold count is stratified as well as it can be
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
                fold[held_out] = number
    names = np.array(["test"] * test_folds + ["validation"] * validation_folds + ["train"] * train_folds, dtype=object)
    return names[fold]


def subject_folds(rows: pd.DataFrame, groups: np.ndarray, k: int = 10, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) per row: k stratified folds in which no leakage group (so no subject)
    appears in two folds. For cross-validation on small datasets such as CK+ and JAFFE."""
    if len(np.unique(groups)) < k:
        raise OptionError(f"{len(np.unique(groups))} subjects/groups cannot fill {k} folds", "use fewer folds (--kfold)")
    fold = np.empty(len(rows), np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(rows)), rows["label"].to_numpy(), groups)):
        fold[held_out] = number
    return fold


def leakage_violations(rows: pd.DataFrame, split: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Every way the assignment leaks: groups in more than one split, and synthetic rows outside the
    training split. Empty when the assignment is leakage-free."""
    frame = pd.DataFrame({"id": rows["id"].to_numpy(), "split": split, "group": groups,
                          "synthetic": rows["is_synthetic"].to_numpy(dtype=bool)})
    used = frame[frame["split"].notna()]
    spread = used.groupby("group")["split"].nunique()
    leaking_groups = spread[spread > 1].index
    problems = [
        pd.DataFrame({"problem": "group spans splits", "group": leaking_groups,
                      "ids": [sorted(used.loc[used.group == g, "id"]) for g in leaking_groups]}),
        pd.DataFrame({"problem": "synthetic row outside train",
                      "group": used.loc[used.synthetic & (used.split != "train"), "group"],
                      "ids": [[i] for i in used.loc[used.synthetic & (used.split != "train"), "id"]]}),
    ]
    return pd.concat(problems, ignore_index=True)


def balanced_selection(labels: np.ndarray, split: np.ndarray, target: str | Mapping[str, float],
                       seed: int = 0) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Which training rows to keep for a target class distribution, by subsampling majority
    classes; returns the keep mask and, per class, the count wanted, kept and still missing
    (the deficit ``synthesize`` is meant to fill).

    ``target`` is ``uniform`` (every class as large as the smallest), ``uniform:N`` (N per class:
    larger classes subsampled, smaller ones kept whole and short by the deficit), ``cap:N`` (at
    most N per class), or proportions per class (scaled so that no class needs more rows than it has).
    """
    train = split == "train"
    available = pd.Series(labels[train]).value_counts()
    if isinstance(target, str) and target == "uniform":
        wanted = pd.Series(available.min(), index=available.index)
    elif isinstance(target, str) and target.startswith("uniform:"):
        wanted = pd.Series(int(target.split(":", 1)[1]), index=available.index)
    elif isinstance(target, str) and target.startswith("cap:"):
        cap = int(target.split(":", 1)[1])
        wanted = available.clip(upper=cap)
    elif isinstance(target, Mapping):
        shares = pd.Series(target, dtype=float)
        shares = shares[shares > 0] / shares[shares > 0].sum()
        unknown = set(shares.index) - set(available.index)
        if unknown:
            raise OptionError(f"the balance target names classes with no training rows: {sorted(unknown)}",
                              f"name some of {', '.join(sorted(available.index))}")
        scale = (available.reindex(shares.index) / shares).min()
        wanted = (shares * scale).round().astype(int)
    else:
        raise OptionError(f"unknown balance target {target!r}", "use uniform, uniform:N, cap:N or proportions per class")
    rng = np.random.default_rng(seed)
    keep = ~train
    for label, count in wanted.items():
        members = np.flatnonzero(train & (labels == label))
        keep[rng.choice(members, size=min(int(count), len(members)), replace=False)] = True
    report = {str(label): {"wanted": int(wanted.get(label, 0)), "available": int(available.get(label, 0)),
                           "kept": int((keep & train & (labels == label)).sum()),
                           "deficit": max(0, int(wanted.get(label, 0)) - int(available.get(label, 0)))}
              for label in available.index}
    return keep, report
