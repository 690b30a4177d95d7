"""The FiftyOne view of a workspace: its rows and audit results mirrored into a FiftyOne dataset.

FiftyOne is fercurate's audit UI. :func:`sync_to_fiftyone` mirrors a workspace (plus the audit's
per-row results and optional embeddings) into a persistent FiftyOne dataset, one sample per
manifest row, with tags and saved views that take a reviewer straight to the problems: near
duplicates across splits, likely mislabelled faces, conflicting duplicate labels, faces not found,
synthetic rows with their provenance, each derived face beside the real face it was made from
(families: see :func:`families`), and the faces of thin demographic cells.
:func:`sync_audit_to_fiftyone` does it with the workspace's latest audit, and
:func:`export_fiftyone_dataset` writes exported rows as a FiftyOne dataset folder.

FiftyOne is imported only inside functions, after :mod:`fercurate.audit.fiftyone_database` has
prepared its database: it reads its configuration from the environment when first imported, and
importing fercurate must stay light.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fercurate.audit.balance import THIN_CELL, THIN_CELL_COLUMNS
from fercurate.audit.fiftyone_database import (
    dataset_name,
    prepare_fiftyone_database,
    workspace_database_dir,
)
from fercurate.audit.review import (
    apply_reviews,
    decisions_from_dataset,
    read_reviews,
    record_decisions,
)
from fercurate.errors import FiftyOneError
from fercurate.schema import ROW_SCHEMA, face_filepaths
from fercurate.workspace import Workspace

if TYPE_CHECKING:
    import fiftyone as fo
    import pandas as pd

#: Per-row audit results that :func:`sync_to_fiftyone` understands, with their types. Columns of an
#: ``audit_rows`` table outside this list are added too, typed from the table.
AUDIT_COLUMNS: dict[str, pa.DataType] = {
    "brightness": pa.float64(),
    "contrast": pa.float64(),
    "blur": pa.float64(),
    "is_blank": pa.bool_(),
    "size_anomaly": pa.bool_(),
    "face_detected": pa.bool_(),
    "not_a_face": pa.bool_(),
    "phash": pa.string(),
    "exact_group": pa.int64(),
    "near_group": pa.int64(),
    "duplicate_of": pa.string(),
    "cross_split_duplicate": pa.bool_(),
    "conflicting_duplicate_labels": pa.bool_(),
    "label_issue": pa.bool_(),
    "label_quality": pa.float64(),
    "predicted_label": pa.string(),
    "predicted_probability": pa.float64(),
    "uniqueness": pa.float64(),
    **{column: pa.string() for column in THIN_CELL_COLUMNS.values()},
}
#: Audit group columns use -1 for "no group"; FiftyOne gets None so the App can filter on it.
_NO_GROUP_COLUMNS = ("exact_group", "near_group")

#: tag -> (field, value): a sample carries the tag when its field holds the value.
AUDIT_TAGS: dict[str, tuple[str, bool]] = {
    "near-duplicate-across-splits": ("cross_split_duplicate", True),
    "conflicting-duplicate-labels": ("conflicting_duplicate_labels", True),
    "likely-mislabelled": ("label_issue", True),
    "no-face": ("not_a_face", True),
    "blank": ("is_blank", True),
    "synthetic": ("is_synthetic", True),
}


#: Family fields, derived from ``parent_id`` (see :func:`families`): the real face a row derives from
#: (its own id for a real face), its place in that family (0 for the real face) and the family's size.
FAMILY_FIELD = "family"
FAMILY_RANK_FIELD = "family_rank"
FAMILY_SIZE_FIELD = "family_size"
_FAMILY_TYPES: dict[str, pa.DataType] = {FAMILY_FIELD: pa.string(), FAMILY_RANK_FIELD: pa.int64(),
                                         FAMILY_SIZE_FIELD: pa.int64()}
_ID_FIELD = "fercurate_id"  # `id` is FiftyOne's own sample id
#: The face as train and export read it (the aligned face where there is one), a second media field.
FACE_FIELD = "face_filepath"
#: What the ``synthetic`` view shows of each face: who it is, where it came from, and the filter's scores.
PROVENANCE_FIELDS = (_ID_FIELD, "ground_truth", "label", "source", FAMILY_FIELD, "parent_id", "generator", "seed",
                     "recipe", "synthetic_label", "near_copy_hamming", "near_copy_distance", "judge_probability")


@dataclass(frozen=True)
class SavedView:
    """A saved view of the synced dataset: ``select`` builds it from the dataset."""

    name: str
    description: str
    select: Callable[[Any], Any]


def _tagged(tag: str, sort_by: tuple[str, ...] = (), fields: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """A view builder: the samples with ``tag``, ordered by ``sort_by`` (then by id, so the order is
    the same on every load), showing only ``fields`` (besides FiftyOne's own) when given."""

    def select(dataset: fo.Dataset) -> Any:
        view = dataset.match_tags(tag)
        if sort_by:
            view = view.sort_by([(field, 1) for field in (*sort_by, _ID_FIELD)])
        return view.select_fields(list(fields)) if fields else view

    return select


def _families_with_derived_faces(dataset: fo.Dataset) -> Any:
    """Every family with a derived face, as a dynamic group per family with the real face first."""
    from fiftyone import ViewField

    return dataset.match(ViewField(FAMILY_SIZE_FIELD) > 1).group_by(
        FAMILY_FIELD, order_by=FAMILY_RANK_FIELD, order_by_key=0, create_index=True)


def _faces_in_thin_cells(dataset: fo.Dataset) -> Any:
    """The faces in a thin label x demographic cell, ordered by cell."""
    from fiftyone import ViewField

    fields = list(THIN_CELL_COLUMNS.values())
    in_a_thin_cell = ViewField(fields[0]).exists()
    for field in fields[1:]:
        in_a_thin_cell = in_a_thin_cell | ViewField(field).exists()
    return dataset.match(in_a_thin_cell).sort_by([(field, 1) for field in (*fields, _ID_FIELD)])


#: The views every sync saves, in this order.
SAVED_VIEWS: tuple[SavedView, ...] = (
    SavedView("near duplicates across splits",
              "Exact or near duplicates that sit in different splits (leakage); grouped by duplicate group.",
              _tagged("near-duplicate-across-splits", ("near_group", "exact_group"))),
    SavedView("likely mislabelled", "Rows whose label the audit doubts, least trustworthy label first.",
              _tagged("likely-mislabelled", ("label_quality",))),
    SavedView("conflicting duplicate labels",
              "Duplicates of one face that carry different labels; grouped by duplicate group.",
              _tagged("conflicting-duplicate-labels", ("exact_group", "near_group"))),
    SavedView("no face detected", "Images that show no face: dlib finds nothing face-like even at a permissive "
              "threshold, or the image is a flat graphic (a placeholder, an icon, a blank). Faces the detector only "
              "missed (profile, tilted, covered) have face_detected false: filter it in the sidebar.",
              _tagged("no-face")),
    SavedView("synthetic", "Rows made by a generator or augmentation, not photographed, with their generator, "
              "parent, seed, recipe and filter scores; by generator, least convincing (judge) first.",
              _tagged("synthetic", ("generator", "judge_probability"), PROVENANCE_FIELDS)),
    SavedView("synthetic with parents", "Every real face that has derived faces (synthetic training faces, "
              "occluded test copies), grouped by family: the real face first, then the faces made from it.",
              _families_with_derived_faces),
)
#: Saved only when the audit found thin demographic cells (see fercurate.audit.balance).
THIN_CELLS_VIEW = SavedView(
    "thin demographic cells", f"Faces in a label x gender or label x age-group cell with fewer than {THIN_CELL} "
    f"faces in its split; filter {' or '.join(THIN_CELL_COLUMNS.values())} in the sidebar to see one cell.",
    _faces_in_thin_cells)

SIMILARITY_KEY = "similarity"
#: Syncs before December 2026 made ``uniqueness`` a Brain run; it is an audit column now.
_OLD_UNIQUENESS_RUN = "uniqueness"
EMBEDDING_FIELD = "embedding"
_WORKSPACE_INFO_KEY = "fercurate_workspace"
_EMBEDDINGS_INFO_KEY = "fercurate_embeddings_sha1"
_EXTRA_FIELDS_INFO_KEY = "fercurate_extra_audit_fields"
#: Sample fields made from manifest columns (every schema column but ``filepath``, which is the
#: sample's own absolute ``filepath``).
_MANIFEST_FIELDS = tuple(_ID_FIELD if name == "id" else name for name in ROW_SCHEMA.names if name != "filepath")
#: Sample fields that FiftyOne owns or that sync derives: no audit column may use these names.
_RESERVED_FIELDS = ("tags", "metadata", "media_type", "created_at", "last_modified_at", _ID_FIELD,
                    "ground_truth", "prediction", EMBEDDING_FIELD, *_FAMILY_TYPES)



def sync_to_fiftyone(
    workspace: Workspace,
    audit_rows: pa.Table | pd.DataFrame | None = None,
    embeddings: np.ndarray | None = None,
    name: str | None = None,
) -> fo.Dataset:
    """Mirror ``workspace`` (and its audit) into a persistent FiftyOne dataset and return it.

    One sample per manifest row: ``filepath`` is the image's absolute path, ``metadata`` its
    size, :data:`FACE_FIELD` the absolute path of the face as training reads it (aligned where
    ``fercurate align`` made it; the App's media-field switch shows it), every schema column is a
    field (``id`` as ``fercurate_id``, since FiftyOne owns ``id``; ``label_votes`` and
    ``action_units`` as dicts; ``landmarks`` as a list of [x, y]), ``label`` is also the
    classification ``ground_truth``, ``flags`` are also tags, and ``family``,
    ``family_rank`` and ``family_size`` place each face in its family (see :func:`families`).

    ``audit_rows`` (keyed by ``id``) adds per-row audit results (see :data:`AUDIT_COLUMNS`; any
    may be absent, and their values win over the manifest's quality columns), the tags of
    :data:`AUDIT_TAGS`, and ``predicted_label`` as the classification ``prediction`` with
    confidence ``predicted_probability`` (``1 - label_quality`` where that is absent); the audit's
    ``uniqueness`` (Brain's score, see :mod:`fercurate.audit.uniqueness`) is a field to sort by.
    ``embeddings`` (one row per manifest row, in manifest order) are stored on ``embedding`` and
    indexed by FiftyOne Brain for similarity search (brain key ``similarity``, sklearn backend), all
    offline.

    The dataset mirrors its inputs: a re-sync adds new rows, deletes removed ones, and updates
    only the fields that changed (matching samples by ``fercurate_id``); audit fields, embeddings
    and brain runs not given this time are cleared. Tags that reviewers add in the App are kept.
    The saved views of :data:`SAVED_VIEWS` are (re)written every time; :data:`THIN_CELLS_VIEW` while
    the audit found thin demographic cells (and removed otherwise).

    The database is the workspace's own (``<workspace>/fiftyone-db``) unless the user set
    ``FIFTYONE_DATABASE_DIR`` or ``FIFTYONE_DATABASE_URI``.
    """
    workspace.require()
    prepare_fiftyone_database(workspace_database_dir(workspace))
    import fiftyone as fo

    name = name or dataset_name(workspace)
    if fo.dataset_exists(name):  # review decisions taken since the last pull are kept, not overwritten
        with workspace.lock():
            record_decisions(workspace, decisions_from_dataset(_open_dataset(fo, name, workspace)))
    manifest = apply_reviews(workspace.manifest(), read_reviews(workspace))
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != manifest.num_rows:
            raise ValueError(
                f"embeddings must be an N x D array with one row per manifest row ({manifest.num_rows}); "
                f"got shape {embeddings.shape}"
            )
    columns, field_types = _sample_columns(workspace, manifest, audit_rows)
    dataset = _open_dataset(fo, name, workspace)
    if dataset.has_brain_run(_OLD_UNIQUENESS_RUN):
        dataset.delete_brain_run(_OLD_UNIQUENESS_RUN)  # also deletes its field: the audit's column replaces it
    _drop_extra_fields_not_given(dataset, field_types)
    _declare_fields(fo, dataset, field_types, embeddings)

    ids: list[str] = columns[_ID_FIELD]
    existing = _stored_values(dataset, [_ID_FIELD])
    existing_sample_ids, existing_ids = existing["id"], existing[_ID_FIELD]
    wanted = set(ids)
    stale = [sample_id for sample_id, row_id in zip(existing_sample_ids, existing_ids) if row_id not in wanted]
    if stale:
        dataset.delete_samples(stale)
    kept = {row_id: sample_id for sample_id, row_id in zip(existing_sample_ids, existing_ids) if row_id in wanted}
    # Embeddings and the brain runs built on them are rewritten only when they (or the rows) changed.
    fingerprint = None if embeddings is None else _fingerprint(ids, embeddings)
    indexed = (fingerprint is not None and fingerprint == dataset.info.get(_EMBEDDINGS_INFO_KEY)
               and not stale and len(kept) == len(ids) and dataset.has_brain_run(SIMILARITY_KEY))
    _update_samples(fo, dataset, columns, field_types, kept, None if indexed else embeddings)
    _add_samples(fo, dataset, columns, field_types, [i for i, row_id in enumerate(ids) if row_id not in kept],
                 embeddings)

    _save_views(dataset)
    if not indexed:
        _index_embeddings(dataset, embeddings, ids)
        dataset.info[_EMBEDDINGS_INFO_KEY] = fingerprint
        dataset.save()
    return dataset


def _fingerprint(ids: Sequence[str], embeddings: np.ndarray) -> str:
    """A digest of the embeddings and the rows they belong to."""
    digest = hashlib.sha1("\n".join(ids).encode())
    digest.update(f"{embeddings.shape}{embeddings.dtype}".encode())
    digest.update(np.ascontiguousarray(embeddings).data)
    return digest.hexdigest()


def _open_dataset(fo: Any, name: str, workspace: Workspace) -> fo.Dataset:
    """Load the persistent dataset ``name``, or create it; refuse one that mirrors something else."""
    root = str(workspace.root.resolve())
    if not fo.dataset_exists(name):
        dataset = fo.Dataset(name, persistent=True)
        dataset.info[_WORKSPACE_INFO_KEY] = root
        dataset.save()
        return dataset
    dataset = fo.load_dataset(name)
    owner = dataset.info.get(_WORKSPACE_INFO_KEY)
    if owner != root and (owner is not None or len(dataset)):
        what = f"the workspace {owner}" if owner else "something fercurate did not make"
        raise FiftyOneError(f"FiftyOne dataset {name!r} mirrors {what}, not {root}",
                            "pass another dataset name (--dataset), or delete that dataset")
    if owner is None:
        dataset.info[_WORKSPACE_INFO_KEY] = root
        dataset.save()
    return dataset


def _drop_extra_fields_not_given(dataset: fo.Dataset, types: dict[str, pa.DataType]) -> None:
    """Delete the fields that earlier syncs made from extra audit columns absent this time."""
    extra = [name for name in types
             if name not in AUDIT_COLUMNS and name not in _MANIFEST_FIELDS and name not in _FAMILY_TYPES]
    for name in dataset.info.get(_EXTRA_FIELDS_INFO_KEY, []):
        if name not in extra and dataset.has_sample_field(name):
            dataset.delete_sample_field(name)
    dataset.info[_EXTRA_FIELDS_INFO_KEY] = extra
    dataset.save()


def _sample_columns(
    workspace: Workspace, manifest: pa.Table, audit_rows: pa.Table | pd.DataFrame | None
) -> tuple[dict[str, list[Any]], dict[str, pa.DataType]]:
    """Every sample field's values, in manifest order, and the arrow type each field is declared from.

    Schema columns come first (renamed or converted where FiftyOne needs it), then audit columns,
    aligned to the manifest by id. Derived values (filepath, tags, classifications, metadata) are
    under the keys ``filepath``, ``tags``, ``ground_truth``, ``prediction`` and ``metadata``.
    """
    columns: dict[str, list[Any]] = {}
    types: dict[str, pa.DataType] = {}
    for field in ROW_SCHEMA:
        if field.name == "filepath":
            continue
        key = _ID_FIELD if field.name == "id" else field.name
        columns[key] = _python_values(manifest[field.name], field.type)
        types[key] = field.type
    for name, values in zip(_FAMILY_TYPES, families(columns[_ID_FIELD], columns["parent_id"])):
        columns[name] = values
        types[name] = _FAMILY_TYPES[name]
    audit, audit_types = _aligned_audit(manifest, audit_rows)
    for column, values in audit.items():
        if column in _NO_GROUP_COLUMNS:
            values = [None if value == -1 else value for value in values]
        if column in columns:  # a quality column the manifest holds too: the audit's value wins
            values = [new if new is not None else old for new, old in zip(values, columns[column])]
        columns[column] = values
        types[column] = audit_types[column]
    for column, arrow_type in AUDIT_COLUMNS.items():  # absent audit results are cleared
        if column not in columns:
            columns[column] = [None] * manifest.num_rows
            types[column] = arrow_type

    root = workspace.root.resolve()
    columns["filepath"] = [f"{root}{os.sep}{path}" for path in manifest["filepath"].to_pylist()]  # 1 s as Paths
    columns[FACE_FIELD] = [f"{root}{os.sep}{path}" for path in face_filepaths(manifest)]
    types[FACE_FIELD] = pa.string()
    columns["tags"] = [_managed_tags(columns, i) for i in range(manifest.num_rows)]
    columns["ground_truth"] = columns["label"]
    columns["prediction"] = [
        None if label is None else (label, _prediction_confidence(probability, quality))
        for label, probability, quality in zip(columns["predicted_label"], columns["predicted_probability"],
                                               columns["label_quality"])
    ]
    columns["metadata"] = list(zip(columns["width"], columns["height"], columns["channels"]))
    return columns, types


def _prediction_confidence(probability: float | None, quality: float | None) -> float | None:
    """The model's probability of its label where the audit recorded it; else 1 - the label quality."""
    if probability is not None and not math.isnan(probability):
        return probability
    return None if quality is None or math.isnan(quality) else 1.0 - quality


def families(ids: Sequence[str], parent_ids: Sequence[str | None]) -> tuple[list[str], list[int], list[int]]:
    """Per row: its family, its rank in the family, and the family's size.

    A row's family is the id of the real face it derives from, following ``parent_id`` links (its
    own id for a real face; the last id reached when a parent is no longer in the manifest). Rank 0
    is the real face, then the derived faces by id, so a view grouped by family and ordered by rank
    shows each real face first, then every face made from it.
    """
    parent_of = dict(zip(ids, parent_ids))
    roots: list[str] = []
    for row_id in ids:
        seen = {row_id}
        while parent_of.get(row_id) is not None and parent_of[row_id] not in seen:
            row_id = parent_of[row_id]
            seen.add(row_id)
        roots.append(row_id)
    order = sorted(range(len(ids)), key=lambda i: (roots[i], ids[i] != roots[i], ids[i]))
    ranks = [0] * len(ids)
    for previous, i in zip([None, *order], order):
        ranks[i] = 0 if previous is None or roots[previous] != roots[i] else ranks[previous] + 1
    sizes = Counter(roots)
    return roots, ranks, [sizes[root] for root in roots]


def _aligned_audit(
    manifest: pa.Table, audit_rows: pa.Table | pd.DataFrame | None
) -> tuple[dict[str, list[Any]], dict[str, pa.DataType]]:
    """The audit's columns as python lists aligned to the manifest (None where a row has none),
    and their types. Copies of manifest columns other than the quality ones (an audit table may
    carry ``label`` or ``source`` for its own reports) are left out: the manifest owns those."""
    if audit_rows is None:
        return {}, {}
    if not isinstance(audit_rows, pa.Table):
        audit_rows = pa.Table.from_pandas(audit_rows, preserve_index=False)
    if "id" not in audit_rows.column_names:
        raise ValueError(f"audit_rows needs an 'id' column; it has {audit_rows.column_names}")
    if pc.count_distinct(audit_rows["id"]).as_py() != audit_rows.num_rows:
        raise ValueError("audit_rows has repeated ids; give one row per manifest id")
    positions = pc.index_in(manifest["id"], value_set=audit_rows["id"].combine_chunks())
    values: dict[str, list[Any]] = {}
    types: dict[str, pa.DataType] = {}
    taken = set(_RESERVED_FIELDS).intersection(audit_rows.column_names)
    if taken:
        raise ValueError(f"audit_rows may not have the column(s) {sorted(taken)}: FiftyOne or fercurate uses "
                         "those field names")
    for column in audit_rows.column_names:
        if column not in AUDIT_COLUMNS and column in ROW_SCHEMA.names:
            continue
        aligned = audit_rows[column].take(positions)
        if column not in AUDIT_COLUMNS and pa.types.is_null(aligned.type):
            continue  # an extra column with no values at all (a step that did not run) has no type
        if column in AUDIT_COLUMNS:
            try:
                aligned = aligned.cast(AUDIT_COLUMNS[column])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise ValueError(f"audit column {column!r} must be {AUDIT_COLUMNS[column]}: {error}") from None
        elif not _scalar_type(aligned.type):
            raise ValueError(
                f"audit column {column!r} has type {aligned.type}; extra audit columns must be bool, "
                "integer, floating point or string"
            )
        values[column] = aligned.to_pylist()
        types[column] = aligned.type
    return values, types


def _scalar_type(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type)
            or pa.types.is_floating(arrow_type) or pa.types.is_string(arrow_type))


def _python_values(column: pa.ChunkedArray, arrow_type: pa.DataType) -> list[Any]:
    """A column as the python values FiftyOne stores: maps become dicts with string keys."""
    values = column.to_pylist()
    if pa.types.is_map(arrow_type):
        return [None if pairs is None else {str(key): value for key, value in pairs} for pairs in values]
    return values


def _managed_tags(columns: dict[str, list[Any]], row: int) -> list[str]:
    """The tags fercurate gives a row: its flags, then the audit tags it earns."""
    tags = list(columns["flags"][row] or [])
    for tag, (field, value) in AUDIT_TAGS.items():
        if columns[field][row] is value and tag not in tags:
            tags.append(tag)
    return tags


def _field_type(fo: Any, arrow_type: pa.DataType) -> tuple[Any, dict[str, Any]]:
    """The FiftyOne field class (and add_sample_field keyword arguments) for an arrow type."""
    if pa.types.is_string(arrow_type):
        return fo.StringField, {}
    if pa.types.is_boolean(arrow_type):
        return fo.BooleanField, {}
    if pa.types.is_integer(arrow_type):
        return fo.IntField, {}
    if pa.types.is_floating(arrow_type):
        return fo.FloatField, {}
    if pa.types.is_map(arrow_type):
        return fo.DictField, {}
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        item = arrow_type.value_type
        if pa.types.is_list(item) or pa.types.is_fixed_size_list(item):
            return fo.ListField, {"subfield": fo.ListField}
        return fo.ListField, {"subfield": _field_type(fo, item)[0]}
    raise TypeError(f"no FiftyOne field type for arrow type {arrow_type}")


def _declare_fields(fo: Any, dataset: fo.Dataset, types: dict[str, pa.DataType], embeddings: np.ndarray | None) -> None:
    """Declare every field up front, so the App can filter even on fields that are all None.

    The new fields are merged into the schema in one call (FiftyOne's private
    ``_merge_sample_field_schema``, which ``add_sample_field`` makes per field): one field at a time
    reloaded the dataset 67 times, 6 seconds of a fresh sync.
    """
    from fiftyone.core.odm.utils import create_field

    schema = dataset.get_field_schema()
    wanted = {name: _field_type(fo, arrow_type) for name, arrow_type in types.items()}
    wanted.update({name: (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification})
                   for name in ("ground_truth", "prediction")})
    if embeddings is not None:
        wanted[EMBEDDING_FIELD] = (fo.VectorField, {})
    new = {name: create_field(name, ftype, **kwargs) for name, (ftype, kwargs) in wanted.items() if name not in schema}
    if new:
        dataset._merge_sample_field_schema(new)
    dataset.create_index(_ID_FIELD, unique=True)


def _label(fo: Any, field: str, value: Any) -> Any:
    """The FiftyOne value of a derived field from its plain value in the sample columns."""
    if value is None:
        return None
    if field == "ground_truth":
        return fo.Classification(label=value)
    if field == "prediction":
        return fo.Classification(label=value[0], confidence=value[1])
    if field == "metadata":
        width, height, channels = value
        return fo.ImageMetadata(width=width, height=height, num_channels=channels, mime_type="image/png")
    return value


_LABEL_FIELDS = ("ground_truth", "prediction", "metadata")


def _add_samples(
    fo: Any,
    dataset: fo.Dataset,
    columns: dict[str, list[Any]],
    types: dict[str, pa.DataType],
    rows: Sequence[int],
    embeddings: np.ndarray | None,
) -> None:
    """Add the given manifest rows as new samples.

    The samples' database documents are written in bulk, as ``Dataset.add_samples`` writes them
    (a test compares the two documents field by field), without building a ``fo.Sample`` per row
    first: that object round trip was 95% of a fresh sync's time (about 4 ms a row, so more than
    two minutes for FER2013). This uses two private pieces of FiftyOne, the dataset's sample
    collection and its id, and nothing else.
    """
    if not rows:
        return
    from bson import Binary, ObjectId

    if dataset.media_type is None:
        dataset.media_type = "image"
    plain = [*types, "filepath", "tags"]
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC times
    header = {"_media_type": "image", "_dataset_id": dataset._doc.id, "created_at": now, "last_modified_at": now}
    jitter = np.random.default_rng().random(len(rows)) * 0.001 + 0.999  # FiftyOne's `_rand` for random views
    vectors = _serialized_vectors(embeddings[list(rows)]) if embeddings is not None else None
    # The database stores one batch while the next is built (it runs in its own process).
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        documents: list[dict[str, Any]] = []
        for n, (i, rand) in enumerate(zip(rows, jitter.tolist())):
            document = {"_id": ObjectId(), "_rand": rand, **header}
            document.update((name, columns[name][i]) for name in plain if columns[name][i] is not None)
            for name in _LABEL_FIELDS:
                value = _label_document(name, columns[name][i], ObjectId)
                if value is not None:
                    document[name] = value
            if embeddings is not None:
                document[EMBEDDING_FIELD] = Binary(vectors[n])
            documents.append(document)
            if len(documents) == _INSERT_BATCH or n == len(rows) - 1:
                written.append(writer.submit(dataset._sample_collection.insert_many, documents, ordered=False))
                documents = []
        for batch in written:
            batch.result()


def _serialized_vectors(vectors: np.ndarray) -> list[bytes]:
    """Each row as FiftyOne stores a vector (``np.save`` bytes in a zlib stream, which FiftyOne
    decompresses), with the ``.npy`` header, the same for every row, made once (3.5 s less for
    FER2013's 35,887 embeddings), and stored uncompressed (zlib level 0): float vectors barely
    compress (542 against 651 bytes here) and level 6 took 2.5 s of a FER2013 sync."""
    vectors = np.ascontiguousarray(vectors)
    with io.BytesIO() as buffer:
        np.save(buffer, vectors[0], allow_pickle=False)
        header = buffer.getvalue()[:-vectors[0].nbytes]
    return [zlib.compress(header + row.tobytes(), 0) for row in vectors]


#: Documents per database write when adding samples.
_INSERT_BATCH = 5_000


def _label_document(field: str, value: Any, object_id: Callable[[], Any]) -> dict[str, Any] | None:
    """The database document of a derived field (see :func:`_label`), as FiftyOne writes it."""
    if value is None:
        return None
    if field == "metadata":
        width, height, channels = value
        return {"_cls": "ImageMetadata", "width": width, "height": height, "num_channels": channels,
                "mime_type": "image/png"}
    label, confidence = (value, None) if field == "ground_truth" else value
    document = {"_id": object_id(), "_cls": "Classification", "tags": [], "label": label}
    if confidence is not None:
        document["confidence"] = confidence
    return document


def _update_samples(
    fo: Any,
    dataset: fo.Dataset,
    columns: dict[str, list[Any]],
    types: dict[str, pa.DataType],
    kept: dict[str, str],
    embeddings: np.ndarray | None,
) -> None:
    """Bring the kept samples up to date, writing only the fields whose values changed."""
    if not kept:
        return
    row_of = {row_id: i for i, row_id in enumerate(columns[_ID_FIELD])}
    plain = [name for name in types if name != _ID_FIELD] + ["filepath"]
    # How each derived field is read back for comparison: its paths, and its value's parts.
    derived = {
        "ground_truth": (["ground_truth.label"], lambda value: (value,)),
        "prediction": (["prediction.label", "prediction.confidence"], lambda value: value or (None, None)),
        "metadata": (["metadata.width", "metadata.height", "metadata.num_channels"], lambda value: value),
    }
    current = _stored_values(dataset, [_ID_FIELD, "tags", *plain,
                                       *(path for read, _ in derived.values() for path in read)])
    sample_ids, row_ids = current["id"], current[_ID_FIELD]
    rows = [row_of[row_id] for row_id in row_ids]

    for name in plain:
        new = [columns[name][i] for i in rows]
        if current[name] == new:  # unchanged (one list comparison); NaNs fall through to the check below
            continue
        changed = {sid: value for sid, old, value in zip(sample_ids, current[name], new) if not _same(old, value)}
        if changed:
            dataset.set_values(name, changed, key_field="id")
    for name, (read, parts) in derived.items():
        new = columns[name]
        old_parts = list(zip(*(current[path] for path in read)))
        if old_parts == [tuple(parts(new[i]) or ()) for i in rows]:
            continue
        changed = {sid: _label(fo, name, new[i]) for sid, i, old in zip(sample_ids, rows, old_parts)
                   if not all(_same(a, b) for a, b in zip(old, parts(new[i])))}
        if changed:
            dataset.set_values(name, changed, key_field="id")

    # Tags: fercurate's own are replaced; any other tag (a reviewer's) is kept.
    old_flags = current["flags"]
    changed_tags = {}
    for sid, i, old_tags, flags in zip(sample_ids, rows, current["tags"], old_flags):
        ours = set(AUDIT_TAGS) | set(flags or ())
        tags = [tag for tag in old_tags or () if tag not in ours]
        tags += [tag for tag in columns["tags"][i] if tag not in tags]
        if tags != list(old_tags or ()):
            changed_tags[sid] = tags
    if changed_tags:
        dataset.set_values("tags", changed_tags, key_field="id")

    if embeddings is not None:
        dataset.set_values(EMBEDDING_FIELD, {sid: embeddings[i] for sid, i in zip(sample_ids, rows)},
                           key_field="id")


def _stored_values(dataset: fo.Dataset, paths: Sequence[str]) -> dict[str, list[Any]]:
    """Every sample's value at each dotted path (and its sample ``id``) as the database holds it.

    Read with one raw query: ``dataset.values`` converts each value through FiftyOne's document
    fields, half of a FER2013 re-sync (23 of 45 s under the profiler). The values compared here
    are plain (strings, numbers, lists, dicts), which the database returns as they were written."""
    documents = list(dataset._sample_collection.find({}, {path: True for path in paths}))
    columns: dict[str, list[Any]] = {"id": [str(document["_id"]) for document in documents]}
    for path in paths:
        first, *rest = path.split(".")
        values = [document.get(first) for document in documents]
        for key in rest:
            values = [value.get(key) if isinstance(value, dict) else None for value in values]
        columns[path] = values
    return columns


def _same(old: Any, new: Any) -> bool:
    """Equality as a re-sync needs it: NaN equals NaN."""
    if isinstance(old, float) and isinstance(new, float):
        return old == new or (math.isnan(old) and math.isnan(new))
    return old == new


def _save_views(dataset: fo.Dataset) -> None:
    """(Re)write the saved views of :data:`SAVED_VIEWS`, and :data:`THIN_CELLS_VIEW` while there are thin
    cells (an earlier audit's view of them is removed when this one found none); let the App show
    either the image as ingested or the face as training reads it (:data:`FACE_FIELD`)."""
    if dataset.app_config.media_fields != ["filepath", FACE_FIELD]:
        dataset.app_config.media_fields = ["filepath", FACE_FIELD]
        dataset.save()
    for saved in SAVED_VIEWS:
        dataset.save_view(saved.name, saved.select(dataset), description=saved.description, overwrite=True)
    thin = THIN_CELLS_VIEW.select(dataset)
    if len(thin):
        dataset.save_view(THIN_CELLS_VIEW.name, thin, description=THIN_CELLS_VIEW.description, overwrite=True)
    elif dataset.has_saved_view(THIN_CELLS_VIEW.name):
        dataset.delete_saved_view(THIN_CELLS_VIEW.name)


def _index_embeddings(dataset: fo.Dataset, embeddings: np.ndarray | None, row_ids: Sequence[str]) -> None:
    """Replace the similarity index (``embeddings`` has a row per id of ``row_ids``); without
    embeddings, remove it and the ``embedding`` field.

    The index is Brain's sklearn one on the ``embedding`` field (so its stored results hold no
    copy of the vectors), built from the array in the dataset's order: ``compute_similarity``
    would read the 35,887 vectors of FER2013 back from the database first, 7 of a sync's seconds.
    """
    if dataset.has_brain_run(SIMILARITY_KEY):
        dataset.delete_brain_run(SIMILARITY_KEY)
    if embeddings is None or len(embeddings) == 0:
        if EMBEDDING_FIELD in dataset.get_field_schema():
            dataset.clear_sample_field(EMBEDDING_FIELD)
        return
    from fiftyone.brain.internal.core.sklearn import SklearnSimilarityConfig, SklearnSimilarityIndex

    stored = _stored_values(dataset, [_ID_FIELD])
    sample_ids, in_dataset = stored["id"], stored[_ID_FIELD]
    row_of = {row_id: i for i, row_id in enumerate(row_ids)}
    config = SklearnSimilarityConfig(embeddings_field=EMBEDDING_FIELD, metric="cosine")
    method = config.build()
    method.ensure_requirements()
    method.register_run(dataset, SIMILARITY_KEY)
    index = SklearnSimilarityIndex(dataset, config, SIMILARITY_KEY, backend=method,
                                   embeddings=embeddings[[row_of[row_id] for row_id in in_dataset]],
                                   sample_ids=np.asarray(sample_ids))
    method.save_run_results(dataset, SIMILARITY_KEY, index)


def sync_audit_to_fiftyone(workspace: Workspace, name: str | None = None) -> fo.Dataset:
    """Sync ``workspace`` with the findings of its latest ``fercurate audit``, when there is one.

    The audit's embeddings are used only while the manifest still holds exactly the rows that
    were audited (they are aligned by position); the per-row findings are matched by id always.
    """
    import pyarrow.parquet as pq

    audit_dir = workspace.root / "audit"
    rows_path, embeddings_path = audit_dir / "rows.parquet", audit_dir / "embeddings.npy"
    audit_rows = pq.read_table(rows_path) if rows_path.exists() else None
    embeddings = None
    if audit_rows is not None and embeddings_path.exists():
        if audit_rows["id"].to_pylist() == workspace.manifest()["id"].to_pylist():
            embeddings = np.load(embeddings_path)
    return sync_to_fiftyone(workspace, audit_rows, embeddings, name)


def export_fiftyone_dataset(workspace: Workspace, ids: Sequence[str], splits: Sequence[str],
                            directory: Path) -> dict[str, Any]:
    """Export the rows ``ids`` (with their curated ``splits``, as a field and as tags) as a
    FiftyOne dataset folder (``fiftyone.types.FiftyOneDataset``, images included), which
    ``fo.Dataset.from_dir`` reloads anywhere."""
    import fiftyone as fo

    mirror = sync_audit_to_fiftyone(workspace)
    view = mirror.select_by(_ID_FIELD, list(ids), ordered=True)
    staging = view.clone()  # a throwaway copy: the workspace's mirror keeps no export state
    try:
        staging.set_values("split", list(splits))
        faces = staging.values(FACE_FIELD)
        if faces != staging.values("filepath"):  # aligned faces are exported, as training reads them
            staging.set_values("filepath", faces)
            staging.compute_metadata(overwrite=True, progress=False)
        for split_name in sorted(set(splits)):
            staging.match(fo.ViewField("split") == split_name).tag_samples(split_name)
        with quiet_fiftyone():
            staging.export(export_dir=str(directory), dataset_type=fo.types.FiftyOneDataset, export_media=True,
                           progress=False)
        return {"samples": len(staging), "dataset": mirror.name}
    finally:
        staging.delete()


@contextlib.contextmanager
def quiet_fiftyone() -> Iterator[None]:
    """Silence FiftyOne's informational logging (remote-session instructions, welcome banner)."""
    logger = logging.getLogger("fiftyone")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
