"""Re-ingest keeps what later steps added to a row: the carry-forward rule of the workspace merge.

A source re-emits the columns it knows each time it is ingested. Later steps fill others on the
same row: FER+ (``label``/``label_source``/``label_votes`` and ``ferplus-*`` flags), review
(``label_source='review'``, ``review-drop``), the audit (``phash``, ``blur``, ``brightness``,
``contrast``, ``face_detected``, ``duplicate_of``), demographic estimators and sidecars
(``<column>``/``<column>_source``), export (``split``). Rows of other ids (synthetic children)
are never touched by a re-ingest at all.

Invariant: when a re-ingested row has the same pixels (``sha1``) and the same source label
(``native_label``) as the row it replaces, every column the source left empty (null, or the schema's
default such as ``unknown`` / ``original``) keeps its previous value, a previous relabel
(``label_source`` other than ``original``) keeps its label, and previous flags are kept after the
source's own (sources re-emit theirs each run, so this adds only what later steps set). When the
pixels or the source label changed, what later steps derived from them no longer holds: the row is
the source's alone, and the reset is counted with its reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fercurate.schema import ROW_DEFAULTS, ROW_SCHEMA

_SOURCE_OWNED = frozenset({"id", "source", "source_split", "origin", "filepath", "width", "height", "channels",
                           "sha1", "native_label", "label", "label_source", "flags"})
PIXELS_CHANGED = "pixels changed"
LABEL_CHANGED = "source label changed"


def _later_values(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The values of ``old`` that later steps added and ``new`` (the source's row) lacks."""
    carried = {name: old[name] for name in ROW_SCHEMA.names
               if name not in _SOURCE_OWNED and old[name] is not None
               and new[name] in (None, ROW_DEFAULTS.get(name)) and new[name] != old[name]}
    if old["label_source"] != "original" and old["label_source"] != new["label_source"]:
        carried.update(label=old["label"], label_source=old["label_source"])
    if old["flags"] is not None:
        own = new["flags"] or []
        flags = [*own, *(flag for flag in old["flags"] if flag not in own)]
        if flags != new["flags"]:
            carried["flags"] = flags
    return carried


def carry_forward(faces: pa.Table, existing: pa.Table) -> tuple[pa.Table, int, Counter[str]]:
    """``faces`` (a run's rows) with what later steps added to the rows they replace in ``existing``;
    also how many rows kept such values, and how many lost them, per reason."""
    replaces = pc.is_in(faces["id"], existing["id"])
    if not pc.any(replaces).as_py():
        return faces, 0, Counter()
    replacing = faces.filter(replaces)
    previous = {row["id"]: row for row in existing.filter(pc.is_in(existing["id"], replacing["id"])).to_pylist()}
    kept, reset = 0, Counter[str]()
    rows = replacing.to_pylist()
    for row in rows:
        old = previous[row["id"]]
        carried = _later_values(row, old)
        if not carried:
            continue
        if row["sha1"] != old["sha1"]:
            reset[PIXELS_CHANGED] += 1
        elif row["native_label"] != old["native_label"]:
            reset[LABEL_CHANGED] += 1
        else:
            row.update(carried)
            kept += 1
    merged = pa.concat_tables([faces.filter(pc.invert(replaces)), pa.Table.from_pylist(rows, schema=ROW_SCHEMA)])
    return merged, kept, reset
