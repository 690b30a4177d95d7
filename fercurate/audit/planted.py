"""Planted against found: does the audit find exactly the problems the demo planted, and no others?

The demo (:mod:`fercurate.sources.demo`) plants one case of each problem the audit looks for and
records where (:class:`~fercurate.sources.demo.PlantedDemo`, the ``.planted.json`` beside its CSV).
This module knows which audit checks each planted kind must trip (:data:`EXPECTED`), reads them
from an :class:`~fercurate.audit.result.AuditResult`, and lays the two side by side
(:func:`planted_findings`): one row per planted problem (its ids, the ids the audit flagged for it,
whether they agree) and a last row with whatever the audit flagged on the demo's rows that nothing
planted explains. :func:`find_planted` finds the record of the demo a workspace ingested last.

Only the demo's own rows count (ids ``<dataset>/...``): synthetic rows added later are not the
demo's. A row the audit flags for a reason its planted problem allows (a blank image that is also
"likely mislabelled": it shows no expression at all) is not counted as another finding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from fercurate.audit.balance import THIN_CELL_COLUMNS
from fercurate.audit.result import AuditResult
from fercurate.sources.demo import PlantedDemo, read_planted
from fercurate.workspace import Workspace


def _column(name: str) -> Callable[[pd.DataFrame], pd.Series | None]:
    return lambda rows: rows[name].fillna(False).astype(bool) if name in rows else None


#: Every per-row audit check, by the name the table shows: which rows it flags (None: not run).
CHECKS: dict[str, Callable[[pd.DataFrame], pd.Series | None]] = {
    "exact duplicate": lambda rows: rows["exact_group"] >= 0,
    "near duplicate": lambda rows: rows["near_group"] >= 0,
    "duplicate across splits": _column("cross_split_duplicate"),
    "conflicting duplicate labels": _column("conflicting_duplicate_labels"),
    "likely mislabelled": _column("label_issue"),
    "blank": _column("is_blank"),
    "blurry": _column("is_blurry"),
    "too dark": _column("too_dark"),
    "too bright": _column("too_bright"),
    "size anomaly": _column("size_anomaly"),
    "unreadable": _column("unreadable"),
    "missing image": _column("missing_image"),
    "no face detected": _column("not_a_face"),
    **{f"thin {column} cell": (lambda rows, name=name: rows[name].notna() if name in rows else None)
       for column, name in THIN_CELL_COLUMNS.items()},
}


class Expected(NamedTuple):
    """What the audit must say about one planted kind (each check about every row of the problem)."""

    name: str  # the problem, as the table shows it
    check: str  # the check that finds it, shown beside it
    must: tuple[str, ...]  # checks that must flag its rows (``check`` among them)
    may: tuple[str, ...] = ()  # checks that may flag its rows too


EXPECTED: dict[str, Expected] = {
    "exact_copy_across_splits": Expected("exact copy across splits", "duplicate across splits",
                                         ("exact duplicate", "near duplicate", "duplicate across splits")),
    "near_copy_across_splits": Expected("re-encoded near copy across splits", "near duplicate",
                                        ("near duplicate", "duplicate across splits")),
    # The copy's label is wrong, but a model that learnt from one twin doubts the other: the
    # label-noise check may flag either (or neither); the duplicate check is what finds this.
    "copy_with_other_label": Expected("copy with another label", "conflicting duplicate labels",
                                      ("exact duplicate", "near duplicate", "conflicting duplicate labels"),
                                      ("likely mislabelled",)),
    "flipped_labels": Expected("flipped labels", "likely mislabelled", ("likely mislabelled",)),
    # Neither shows an expression to learn: the label-noise check may flag them too.
    "blank_image": Expected("blank image", "blank", ("blank", "blurry", "no face detected"), ("likely mislabelled",)),
    "non_face": Expected("non-face", "no face detected", ("no face detected",), ("likely mislabelled",)),
}
_DUPLICATES = {"exact_copy_across_splits", "near_copy_across_splits", "copy_with_other_label"}


def flagged(result: AuditResult, planted: PlantedDemo) -> dict[str, set[str] | None]:
    """Per check, the demo's rows the audit flagged (None for a check the audit did not run)."""
    rows = result.rows[result.rows["id"].str.startswith(f"{planted.dataset}/")]
    found: dict[str, set[str] | None] = {}
    for name, check in CHECKS.items():
        mask = check(rows)
        found[name] = None if mask is None else set(rows.loc[mask.to_numpy(bool), "id"])
    return found


def planted_findings(result: AuditResult, planted: PlantedDemo) -> pd.DataFrame:
    """What was planted next to what the audit found, one row per planted problem plus one more.

    Columns: ``problem``, ``kind`` (a :data:`~fercurate.sources.demo.PLANTED_KINDS` value, or
    ``other`` for the last row), ``check`` (the audit check that finds it), ``planted`` and
    ``found`` (lists of ids), ``also`` (the other checks that must flag it and did), ``match``
    (True, False, or None when the audit did not run the check) and ``what`` (the planted record's
    sentence). A problem matches when every check in its :data:`EXPECTED` entry flags its rows
    (and a copy's near-duplicate group is the original and the copy, nothing else); ``found`` holds
    the copy's near-duplicate group for copies, the planted rows the check flagged otherwise. The
    last row (problem ``not planted``) lists ``id (check)`` for every flag on the demo's rows that
    no planted problem explains; it matches when there are none.
    """
    found = flagged(result, planted)
    rows = result.rows.set_index("id")
    explained: dict[str, set[str]] = {name: set() for name in CHECKS}
    records = []
    for problem in planted.problems:
        expected = EXPECTED[problem.kind]
        for check in (*expected.must, *expected.may):
            explained[check].update(problem.ids)
        if found[expected.check] is None:
            records.append((expected.name, problem.kind, expected.check, list(problem.ids), None, [], None,
                            problem.what))
            continue
        missing = [check for check in expected.must
                   if found[check] is not None and not set(problem.ids) <= found[check]]
        if problem.kind in _DUPLICATES:
            copy = problem.ids[-1]
            group = rows.at[copy, "near_group"] if copy in rows.index else -1
            members = sorted(rows.index[rows["near_group"] == group]) if group >= 0 else []
            shown = [row_id for row_id in problem.ids if row_id in members] + sorted(set(members) - set(problem.ids))
            match = not missing and sorted(members) == sorted(problem.ids)
        else:
            shown = [row_id for row_id in problem.ids if row_id in found[expected.check]]
            match = not missing
        also = [check for check in expected.must if check != expected.check and check not in missing
                and found[check] is not None]
        records.append((expected.name, problem.kind, expected.check, list(problem.ids), shown, also, match,
                        problem.what))
    others = sorted((row_id, check) for check, ids in found.items() if ids
                    for row_id in ids - explained[check])
    records.append(("not planted", "other", "any check", [], [f"{row_id} ({check})" for row_id, check in others],
                    [], not others, "every other finding on the demo's rows"))
    return pd.DataFrame.from_records(records, columns=["problem", "kind", "check", "planted", "found", "also",
                                                      "match", "what"])


def all_found(table: pd.DataFrame) -> bool:
    """Whether the audit found exactly the planted problems and no others (every row matches)."""
    return bool(table["match"].eq(True).all())


def display_rows(table: pd.DataFrame, dataset: str = "demo") -> list[tuple[str, str, str, str, str]]:
    """:func:`planted_findings` as text for a terminal table: problem, check, planted, found,
    match ("yes", "no" or "not checked"), ids without their ``<dataset>/`` prefix."""
    def ids(values: list[str] | None) -> str:
        if values is None:
            return "-"
        return ", ".join(value.removeprefix(f"{dataset}/") for value in values) or "none"

    return [(row.problem, row.check, ids(row.planted) if row.kind != "other" else "-", ids(row.found),
             "not checked" if row.match is None else "yes" if row.match else "no") for row in table.itertuples()]


def find_planted(workspace: Workspace, dataset: str = "demo") -> PlantedDemo | None:
    """The planted record of the demo CSV that ``workspace`` ingested last, or None (no demo, a demo
    drawn without problems, or a CSV rewritten since it was recorded)."""
    for record in reversed(workspace.history()):
        if record.get("source") == dataset and record.get("input"):
            planted = read_planted(Path(record["input"]))
            return planted if planted is not None and planted.dataset == dataset else None
    return None


__all__ = ["CHECKS", "EXPECTED", "Expected", "all_found", "display_rows", "find_planted", "flagged",
           "planted_findings"]
