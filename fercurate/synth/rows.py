"""Synthetic rows: a synthetic face's workspace row, from its parent's (a face derived from a real
one) or from its generator's (a face a generator made); its image is stored by
:meth:`~fercurate.workspace.Workspace.store_image`.

A derived row inherits who the face is (subject, demographics, label) from its parent and gets its
own identity (a deterministic id), image (content-addressed, written atomically like ingest's), and
provenance (generator, parent_id, seed, recipe, filter scores). Landmarks, quality measures and
review flags are not inherited: they described the parent's pixels.

A generated row has no parent: its label is the class the generator was asked for
(``label_source`` ``generator``), it has no subject, its demographics are ``unknown`` (the
generators are conditioned on the label only), and ``checkpoint_sha1`` names the weights.
"""

from __future__ import annotations

from typing import Any

from fercurate.schema import DEMOGRAPHIC_COLUMNS, UNKNOWN

#: Columns a derived row takes from its parent.
INHERITED = ("label", "native_label", "label_source", "subject_id", "gender", "gender_source", "age_group",
             "age_group_source", "ethnicity", "ethnicity_source")


def derived_row(parent: dict[str, Any], image: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """A row for a face derived from ``parent`` (a manifest row as a dict); ``provenance`` sets
    ``id``, ``source``, ``is_synthetic``, ``generator``, ``seed``, ``recipe``, the scores, ...
    Every other column is null."""
    return {**{column: parent[column] for column in INHERITED}, **image, "origin": f"derived:{parent['id']}",
            "parent_id": parent["id"], "synthetic_label": parent["label"], **provenance}


def generated_row(label: str, image: dict[str, Any], *, generator: str, checkpoint_sha1: str,
                  **provenance: Any) -> dict[str, Any]:
    """A row for a face ``generator`` made for ``label`` from the weights ``checkpoint_sha1``;
    ``provenance`` sets ``id``, ``seed``, ``recipe``, the scores, ... Every other column is null."""
    unknown = {key: UNKNOWN for column in DEMOGRAPHIC_COLUMNS for key in (column, f"{column}_source")}
    return {"label": label, "native_label": label, "label_source": "generator", **unknown, **image,
            "origin": f"generated:{generator}", "source": "synthetic", "is_synthetic": True, "generator": generator,
            "checkpoint_sha1": checkpoint_sha1, "synthetic_label": label, **provenance}
