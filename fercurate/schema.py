"""The unified schema: canonical emotions, each source's label mapping, and the row layout.

Every stage of fercurate reads and writes rows of this one schema, so it is defined once, here.
A row is one face image. Columns a source does not know stay null; demographics a source does
not know are the value ``"unknown"`` (never a guess), with ``"unknown"`` as their source too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from fercurate.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd  # not imported at run time: ingest stays light

#: Canonical emotions, in FER+'s order. ``label`` holds one of these.
CANONICAL_LABELS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(CANONICAL_LABELS)}

#: How each source writes its labels, mapped to canonical emotions. The native value is kept
#: in ``native_label``; these tables are the only place the translation happens.
SOURCE_LABEL_MAPS: dict[str, dict[str, str]] = {
    # fer2013.csv emotion codes.
    "fer2013": {
        "0": "anger", "1": "disgust", "2": "fear", "3": "happiness",
        "4": "sadness", "5": "surprise", "6": "neutral",
    },
    # Kaggle image-folder release class folders.
    "fer2013-folder": {
        "angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
        "neutral": "neutral", "sad": "sadness", "surprise": "surprise",
    },
    # CK+ Emotion/*_emotion.txt codes.
    "ckplus": {
        "0": "neutral", "1": "anger", "2": "contempt", "3": "disgust",
        "4": "fear", "5": "happiness", "6": "sadness", "7": "surprise",
    },
    # CK+48 release class folders.
    "ckplus48": {
        "anger": "anger", "contempt": "contempt", "disgust": "disgust", "fear": "fear",
        "happy": "happiness", "sadness": "sadness", "surprise": "surprise",
    },
    # JAFFE file-name expression codes.
    "jaffe": {
        "AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness",
        "NE": "neutral", "SA": "sadness", "SU": "surprise",
    },
}

#: Spellings of emotions seen in image folders and hub datasets, for sources without a fixed map.
LABEL_SYNONYMS: dict[str, str] = {
    **{name: name for name in CANONICAL_LABELS},
    "happy": "happiness", "joy": "happiness", "smile": "happiness",
    "surprised": "surprise", "surprize": "surprise",
    "sad": "sadness", "sorrow": "sadness",
    "angry": "anger", "mad": "anger",
    "disgusted": "disgust",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "contemptuous": "contempt",
    "calm": "neutral", "none": "neutral",
}

#: Values a demographic column may hold besides free text, and the allowed provenance values.
UNKNOWN = "unknown"
DEMOGRAPHIC_SOURCES = ("dataset-metadata", "user-sidecar", UNKNOWN)  # plus "estimated:<model>"
DEMOGRAPHIC_COLUMNS = ("gender", "age_group", "ethnicity")

ROW_SCHEMA = pa.schema(
    [
        # identity and provenance
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_split", pa.string()),
        pa.field("origin", pa.string(), nullable=False),  # file (and row) it was read from
        # the image, content-addressed
        pa.field("filepath", pa.string(), nullable=False),  # relative to the workspace
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("channels", pa.int8(), nullable=False),
        pa.field("sha1", pa.string(), nullable=False),  # SHA-1 of the decoded pixels
        # labels
        pa.field("label", pa.string(), nullable=False),
        pa.field("native_label", pa.string(), nullable=False),
        pa.field("label_source", pa.string(), nullable=False),
        pa.field("label_votes", pa.map_(pa.string(), pa.float32())),
        pa.field("flags", pa.list_(pa.string())),
        # people and sequences
        pa.field("subject_id", pa.string()),
        pa.field("sequence_id", pa.string()),
        pa.field("frame_index", pa.int32()),
        pa.field("frame_count", pa.int32()),
        pa.field("intensity", pa.float32()),
        pa.field("landmarks", pa.list_(pa.list_(pa.float32(), 2))),  # (x, y) per point
        pa.field("aligned_filepath", pa.string()),  # the face in the canonical frame (fercurate.align)
        pa.field("alignment", pa.list_(pa.float32())),  # its 2x3 matrix, ingested -> aligned pixels
        pa.field("action_units", pa.map_(pa.int16(), pa.float32())),  # FACS AU -> intensity
        # demographics, each with where it came from
        pa.field("gender", pa.string(), nullable=False),
        pa.field("gender_source", pa.string(), nullable=False),
        pa.field("age_group", pa.string(), nullable=False),
        pa.field("age_group_source", pa.string(), nullable=False),
        pa.field("ethnicity", pa.string(), nullable=False),
        pa.field("ethnicity_source", pa.string(), nullable=False),
        # quality (filled by the audit)
        pa.field("phash", pa.string()),
        pa.field("blur", pa.float32()),
        pa.field("brightness", pa.float32()),
        pa.field("contrast", pa.float32()),
        pa.field("face_detected", pa.bool_()),
        pa.field("duplicate_of", pa.string()),
        # derived rows
        pa.field("is_synthetic", pa.bool_(), nullable=False),
        pa.field("generator", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("recipe", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("checkpoint_sha1", pa.string()),
        pa.field("synthetic_label", pa.string()),  # the label a derived face was made for
        pa.field("near_copy_hamming", pa.int16()),  # pHash distance to the nearest real training face
        pa.field("near_copy_distance", pa.float32()),  # mean |pixel difference| to it, 0..255
        pa.field("judge_probability", pa.float32()),  # the judge classifier's P(synthetic_label)
        # the curated split (assigned by export)
        pa.field("split", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA.names)
#: Version of :data:`ROW_SCHEMA`. 2 added the synthesis columns (``synthetic_label`` and the
#: filter's scores), 3 the aligned face (``aligned_filepath``, ``alignment``); manifests of earlier
#: versions load through :func:`conform_to_schema`.
SCHEMA_VERSION = 3

#: Values a source need not give: filled in when a row is built.
ROW_DEFAULTS: dict[str, object] = {
    "label_source": "original",
    "is_synthetic": False,
    **{column: UNKNOWN for column in DEMOGRAPHIC_COLUMNS},
    **{f"{column}_source": UNKNOWN for column in DEMOGRAPHIC_COLUMNS},
}

SKIP_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),  # the path given to ingest
        pa.field("location", pa.string(), nullable=False),  # file, or file:row
        pa.field("reason", pa.string(), nullable=False),  # short, groups alike skips
        pa.field("detail", pa.string(), nullable=False),  # the specifics of this one
    ]
)

_SOURCE_PATTERN = r"^(fer2013|ckplus|jaffe|imagefolder|demo|synthetic|hub:.+)$"
_SHA1_PATTERN = r"^[0-9a-f]{40}$"
_IMAGE_PATH_PATTERN = r"^images/[0-9a-f]{2}/[0-9a-f]{40}\.png$"


def canonical_label(native: str, source_map: Mapping[str, str] | None = None) -> str | None:
    """Canonical emotion for a native label, or None when it is not a known emotion.

    ``source_map`` (a source's own table, or a user's label map) is consulted first, then the
    common spellings in :data:`LABEL_SYNONYMS` (case and surrounding space ignored).
    """
    key = native.strip()
    if source_map is not None and key in source_map:
        return source_map[key]
    return LABEL_SYNONYMS.get(key.lower())


def image_relpath(sha1: str) -> str:
    """Workspace-relative path of a content-addressed image."""
    return f"images/{sha1[:2]}/{sha1}.png"


def face_filepaths(rows: pa.Table | pd.DataFrame) -> list[str]:
    """The file each row's face is used from by train, export, benchmark and the generators: the
    aligned face where ``fercurate align`` made one (``aligned_filepath``), else the image as
    ingested (``filepath``). Rows without the column (tables of an older schema) use ``filepath``."""
    names = rows.column_names if isinstance(rows, pa.Table) else list(rows.columns)
    original = rows["filepath"].to_pylist() if isinstance(rows, pa.Table) else rows["filepath"].tolist()
    if "aligned_filepath" not in names:
        return original
    aligned = rows["aligned_filepath"].to_pylist() if isinstance(rows, pa.Table) else rows["aligned_filepath"].tolist()
    return [face if isinstance(face, str) else path for face, path in zip(aligned, original, strict=True)]


def conform_to_schema(table: pa.Table) -> pa.Table:
    """``table`` with the row schema: columns an older schema version lacked are added as nulls
    (all added columns are nullable), so workspaces written before them still load."""
    if table.schema == ROW_SCHEMA:
        return table
    missing = [field for field in ROW_SCHEMA if field.name not in table.column_names]
    if any(not field.nullable for field in missing):
        return table  # not an older version of this schema: validate_table says what is wrong
    for field in missing:
        table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(list(COLUMNS)).cast(ROW_SCHEMA)


def validate_table(table: pa.Table) -> None:
    """Raise :class:`SchemaError` if any row of ``table`` breaks the schema's rules."""
    if table.schema != ROW_SCHEMA:
        differing = [field.name for field in ROW_SCHEMA
                     if field.name not in table.column_names or table.schema.field(field.name) != field]
        raise SchemaError(f"table does not have the row schema (columns missing or of another type: {differing})")
    ids = table["id"]

    def fail_where(mask: pa.ChunkedArray | pa.Array, rule: str) -> None:
        mask = pc.fill_null(mask, False)  # a rule about an absent value does not apply
        if pc.any(mask).as_py():
            first = ids.filter(mask)[0].as_py()
            count = pc.sum(mask).as_py()
            raise SchemaError(f"{count} row(s) break the rule '{rule}', first: {first!r}")

    for field in ROW_SCHEMA:
        if not field.nullable:
            fail_where(pc.is_null(table[field.name]), f"{field.name} is required")
    if len(pc.unique(ids)) != table.num_rows:
        counts = pc.value_counts(ids)
        dupes = counts.filter(pc.greater(counts.field("counts"), 1))
        raise SchemaError(f"ids must be unique, repeated: {dupes[0]['values'].as_py()!r}")
    fail_where(pc.invert(pc.is_in(table["label"], pa.array(CANONICAL_LABELS))),
               f"label is one of {', '.join(CANONICAL_LABELS)}")
    fail_where(pc.invert(pc.match_substring_regex(table["source"], _SOURCE_PATTERN)),
               "source is fer2013, ckplus, jaffe, imagefolder, demo, synthetic or hub:<repo>")
    fail_where(pc.invert(pc.match_substring_regex(table["sha1"], _SHA1_PATTERN)),
               "sha1 is 40 lowercase hex digits")
    expected_paths = pc.binary_join_element_wise(
        "images/", pc.utf8_slice_codeunits(table["sha1"], 0, 2), "/", table["sha1"], ".png", "")
    fail_where(pc.not_equal(table["filepath"], expected_paths), "filepath is images/<ab>/<sha1>.png")
    fail_where(pc.invert(pc.match_substring_regex(table["aligned_filepath"], _IMAGE_PATH_PATTERN)),
               "aligned_filepath is images/<ab>/<sha1>.png")
    fail_where(pc.not_equal(pc.is_valid(table["aligned_filepath"]), pc.is_valid(table["alignment"])),
               "aligned_filepath and alignment are both set or both null")
    fail_where(pc.not_equal(pc.list_value_length(table["alignment"]), 6), "alignment is a 2x3 matrix (6 numbers)")
    fail_where(pc.or_(pc.less_equal(table["width"], 0), pc.less_equal(table["height"], 0)),
               "width and height are positive")
    fail_where(pc.invert(pc.is_in(table["channels"], pa.array([1, 3], pa.int8()))),
               "channels is 1 (gray) or 3 (colour)")
    for column in DEMOGRAPHIC_COLUMNS:
        provenance = table[f"{column}_source"]
        known_source = pc.or_(pc.is_in(provenance, pa.array(DEMOGRAPHIC_SOURCES)),
                              pc.starts_with(provenance, "estimated:"))
        fail_where(pc.invert(known_source),
                   f"{column}_source is dataset-metadata, user-sidecar, estimated:<model> or unknown")
        unknown_value = pc.equal(table[column], UNKNOWN)
        unknown_source = pc.equal(provenance, UNKNOWN)
        fail_where(pc.not_equal(unknown_value, unknown_source),
                   f"{column} is 'unknown' exactly when {column}_source is 'unknown'")
    fail_where(pc.and_(table["is_synthetic"], pc.is_null(table["generator"])),
               "a synthetic row names its generator")
    fail_where(pc.and_(table["is_synthetic"], pc.is_in(table["split"], pa.array(["test"]))),
               "a synthetic row is never in a test split")
    fail_where(pc.and_(table["is_synthetic"], pc.and_(pc.is_null(table["parent_id"]),
                                                       pc.is_null(table["checkpoint_sha1"]))),
               "a synthetic row has a parent or a checkpoint")
    fail_where(pc.greater(table["frame_index"], table["frame_count"]),
               "frame_index is at most frame_count")

