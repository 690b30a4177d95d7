"""The workspace: one folder holding the manifest of faces and the images it points to.

Layout::

    manifest.parquet      one row per face, in the unified schema, sorted by id
    skips.parquet         everything an ingest could not use, with its reason
    history.jsonl         one line per ingest run: what, from where, with which options, counts
    images/ab/<sha1>.png  content-addressed images (sha1 of the decoded pixels)
    .lock                 held by the process that is writing

Merge rule: a row's ``id`` is its identity. Ingesting a row whose id is already present
replaces that row (so re-ingesting adds nothing and a corrected source wins); rows with new ids
are added; rows of other sources are left alone. A :class:`~fercurate.sources.base.Relabel`
updates only the columns it names. Skips are replaced per (source, input) on each run.

Writes are atomic: images are written to a temporary name and renamed into place, and the
manifest is replaced in one rename only after every image of the run is on disk. A killed
ingest therefore leaves the previous manifest intact, and re-running it completes the work
(images already present are not written again). Files are created with the modes the user's
umask gives (as ``open`` would), never narrower.

Locking: writers (ingest, audit) hold :meth:`Workspace.lock` exclusively; readers (export) hold it
shared, which works on a read-only workspace too. Only a writer creates the folder; if the run that
created it fails, it removes the folder again. A missing workspace, a path that is a file, a
read-only folder for a writer, and a damaged manifest are :class:`WorkspaceError`s saying what to do.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fercurate.atomic import atomic_path, temporary_name
from fercurate.errors import WorkspaceError, WorkspaceLocked
from fercurate.reingest import carry_forward
from fercurate.schema import (
    COLUMNS,
    ROW_DEFAULTS,
    ROW_SCHEMA,
    SKIP_SCHEMA,
    SOURCE_LABEL_MAPS,
    canonical_label,
    conform_to_schema,
    image_relpath,
    validate_table,
)
from fercurate.sources.base import Face, Relabel, Skip, Source, UnreadableImage

WORKSPACE_ENV = "FERCURATE_WORKSPACE"
DEFAULT_WORKSPACE = "fercurate-workspace"
_BATCH = 256  # faces handed to one worker at a time
_IN_FLIGHT = 8  # batches queued ahead of the reader, bounding memory
_SMALL_IMAGE_BYTES = 3072  # a 48x48 face: stored uncompressed, it still fits one 4 KiB block
#: (workspace, thread) pairs holding the exclusive lock, with the nesting depth: a step that writes
#: inside another (export syncing FiftyOne, which records review decisions) must not wait on itself.
_EXCLUSIVE_HELD: dict[tuple[str, int], int] = {}

Stored = tuple[str, tuple[int, int, int]] | Skip  # (sha1, (height, width, channels)) or why not


def default_workspace() -> Path:
    """The workspace used when none is given: ``$FERCURATE_WORKSPACE``, else ./fercurate-workspace."""
    return Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)


@dataclass
class IngestReport:
    """What one ingest run did."""

    source: str
    input: str
    rows_added: int = 0
    rows_replaced: int = 0
    rows_relabelled: int = 0
    rows_kept_enrichment: int = 0  # replaced rows that kept what later steps added (see fercurate.reingest)
    rows_reset: Counter[str] = field(default_factory=Counter)  # replaced rows that lost it, per reason
    images_written: int = 0
    skips: list[Skip] = field(default_factory=list)
    rows: pa.Table | None = None  # the rows this run produced or relabelled
    seconds: float = 0.0
    alignment: dict[str, Any] | None = None  # what aligning this run's faces did (``ingest --align``)

    @property
    def skip_reasons(self) -> Counter[str]:
        """How many items were skipped, per reason."""
        return Counter(skip.reason for skip in self.skips)

    @property
    def flag_counts(self) -> Counter[str]:
        """How many of this run's rows carry each flag."""
        if self.rows is None or self.rows.num_rows == 0:
            return Counter()
        return Counter(flag for flags in self.rows["flags"].to_pylist() if flags for flag in flags)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the rows themselves are counted, not listed)."""
        return {
            "source": self.source,
            "input": self.input,
            "rows_added": self.rows_added,
            "rows_replaced": self.rows_replaced,
            "rows_relabelled": self.rows_relabelled,
            "rows_kept_enrichment": self.rows_kept_enrichment,
            "rows_reset": dict(self.rows_reset),
            "images_written": self.images_written,
            "skipped": len(self.skips),
            "skip_reasons": dict(self.skip_reasons),
            "flags": dict(self.flag_counts),
            "seconds": round(self.seconds, 3),
            **({"alignment": self.alignment} if self.alignment is not None else {}),
        }


def pixel_sha1(pixels: np.ndarray) -> str:
    """SHA-1 of decoded pixels and their shape: the same face gives the same hash whatever
    container (JPEG, PNG, CSV) it came in."""
    digest = hashlib.sha1(f"{'x'.join(map(str, pixels.shape))}|".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


class Workspace:
    """A folder of faces in the unified schema. See the module docstring for layout and rules."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_workspace()
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"the workspace {self.root} is a file, not a folder",
                                 "give --workspace a folder (`fercurate ingest` creates it)")

    def require(self) -> None:
        """Refuse a workspace that does not exist: commands that read one never create it."""
        if not self.root.is_dir():
            raise WorkspaceError(f"there is no workspace at {self.root}",
                                 "run `fercurate ingest` first, or give the workspace with --workspace")

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def skips_path(self) -> Path:
        return self.root / "skips.parquet"

    @property
    def history_path(self) -> Path:
        return self.root / "history.jsonl"

    # reading

    def manifest(self) -> pa.Table:
        """All rows (an empty table with the row schema when nothing was ingested yet)."""
        return conform_to_schema(_read_parquet(self.manifest_path, ROW_SCHEMA))

    def skips(self) -> pa.Table:
        """Every skip recorded by the latest run of each (source, input)."""
        return _read_parquet(self.skips_path, SKIP_SCHEMA)

    def history(self) -> list[dict[str, Any]]:
        """One record per completed ingest run, oldest first."""
        if not self.history_path.exists():
            return []
        try:
            return [json.loads(line) for line in self.history_path.read_text().splitlines() if line]
        except json.JSONDecodeError as error:
            raise WorkspaceError(f"{self.history_path} is damaged (line {error.lineno}: {error.msg})",
                                 "remove the broken line; the history is a log, the manifest is unaffected") from None

    def image_path(self, row_filepath: str) -> Path:
        """Absolute path of a row's image."""
        return self.root / row_filepath

    def missing_images(self, filepaths: Iterable[str]) -> list[str]:
        """The rows' ``filepath`` values whose image file is not in the workspace (deleted by hand,
        or a partial copy of the workspace), each once, in order."""
        return [path for path in dict.fromkeys(filepaths) if not (self.root / path).is_file()]

    # writing

    @contextmanager
    def lock(self, timeout: float = 600.0, shared: bool = False) -> Iterator[None]:
        """Hold the workspace's lock, waiting up to ``timeout`` seconds for other holders.

        Exclusive (the default) is for writers: it creates the workspace folder if needed (and
        removes it again if the body fails before anything was committed) and refuses a read-only
        folder. ``shared`` is for readers: many may hold it at once, never alongside a writer; it
        needs an existing workspace and works on a read-only one (where no writer can run).
        """
        held = (str(self.root.resolve()), threading.get_ident())
        if _EXCLUSIVE_HELD.get(held):  # this thread writes already: a nested step (export's FiftyOne sync)
            _EXCLUSIVE_HELD[held] += 1
            try:
                yield
            finally:
                _EXCLUSIVE_HELD[held] -= 1
            return
        created = False
        if shared:
            self.require()
            handle = _open_reader_lock(self.root / ".lock")
        else:
            created = not self.root.exists()
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise WorkspaceError(f"cannot create the workspace {self.root} ({error.strerror})",
                                     "choose a folder you can write to") from None
            if not os.access(self.root, os.W_OK):
                raise WorkspaceError(f"the workspace {self.root} is read-only",
                                     "make it writable, or copy it somewhere writable and use that copy")
            handle = open(self.root / ".lock", "a+")
        if handle is None:  # a read-only workspace without a lock file: nobody can be writing it
            yield
            return
        with handle:
            _acquire(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, timeout, self.root)
            if not shared:
                _EXCLUSIVE_HELD[held] = 1
            try:
                yield
            except BaseException:
                if not shared and created and not self.manifest_path.exists():
                    shutil.rmtree(self.root, ignore_errors=True)  # nothing committed: leave no empty workspace
                raise
            finally:
                _EXCLUSIVE_HELD.pop(held, None)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ingest(
        self,
        source: Source,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
    ) -> IngestReport:
        """Read every item of ``source`` into the workspace and commit it atomically.

        ``progress`` is called with the number of items handled since its last call. Replaced rows
        keep what later steps added unless their pixels or source label changed
        (:func:`fercurate.reingest.carry_forward`); a source's relabels are mapped onto the
        workspace's rows by its :meth:`~fercurate.sources.base.Source.resolve` (FER+ checks faces).
        """
        started = time.perf_counter()
        report = IngestReport(source=source.name, input=str(source.path))
        with self.lock():
            faces, relabels = self._store_faces(source, report, progress, workers)
            existing = self.manifest()
            faces, report.rows_kept_enrichment, report.rows_reset = carry_forward(faces, existing)
            if relabels:
                relabels, unresolved = source.resolve(relabels, existing, self.image_path)
                report.skips.extend(unresolved)
            relabelled = self._apply_relabels(existing, relabels, report)
            incoming = pa.concat_tables([faces, relabelled])
            existing_ids = existing["id"]
            report.rows_replaced = pc.sum(pc.is_in(faces["id"], existing_ids)).as_py() or 0
            report.rows_added = faces.num_rows - report.rows_replaced
            report.rows_relabelled = relabelled.num_rows
            report.rows = incoming
            kept = existing.filter(pc.invert(pc.is_in(existing_ids, incoming["id"])))
            self._commit_skips(report)
            self.write_manifest(pa.concat_tables([kept, incoming]))
            report.seconds = time.perf_counter() - started
            with open(self.history_path, "a") as history:
                record = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "options": source.options(), **report.to_dict()}
                history.write(json.dumps(record) + "\n")
        return report

    def write_manifest(self, table: pa.Table) -> None:
        """Validate ``table`` and make it the manifest in one atomic rename. The caller holds
        :meth:`lock` (ingest and audit do)."""
        table = table.sort_by("id")
        validate_table(table)
        _atomic_write_parquet(table, self.manifest_path)

    def read_image(self, row_filepath: str) -> np.ndarray:
        """A row's image as stored: gray ``(H, W)`` or RGB ``(H, W, 3)`` uint8; a missing or
        unreadable file is a :class:`WorkspaceError` saying how to restore it."""
        pixels = cv2.imread(str(self.image_path(row_filepath)), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise WorkspaceError(f"the image {row_filepath} of the workspace is missing or unreadable",
                                 "re-run `fercurate ingest` for its source (it restores missing images)")
        if pixels.ndim == 2:
            return pixels
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB)

    def store_image(self, pixels: np.ndarray) -> dict[str, Any]:
        """Write ``pixels`` (gray or RGB uint8) content-addressed into the workspace, once, atomically
        as ingest does, and return the row's image columns (``filepath``, ``sha1``, size, channels)."""
        sha1 = pixel_sha1(pixels)
        relpath = image_relpath(sha1)
        target = os.path.join(str(self.root), relpath)
        if not os.path.exists(target):
            _atomic_write_png(pixels, target)
        height, width = pixels.shape[:2]
        return {"filepath": relpath, "sha1": sha1, "width": width, "height": height,
                "channels": 1 if pixels.ndim == 2 else pixels.shape[2]}

    def _store_faces(
        self,
        source: Source,
        report: IngestReport,
        progress: Callable[[int], None] | None,
        workers: int | None,
    ) -> tuple[pa.Table, list[Relabel]]:
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        relabels: list[Relabel] = []
        seen_ids: set[str] = set()
        pending: list[tuple[list[Face], Future[tuple[list[Stored], int]]]] = []

        def collect(batch: list[Face], future: Future[tuple[list[Stored], int]]) -> None:
            stored_images, written = future.result()
            report.images_written += written
            for face, stored in zip(batch, stored_images):
                if isinstance(stored, Skip):
                    report.skips.append(stored)
                    continue
                sha1, (height, width, channels) = stored
                row = {**ROW_DEFAULTS, **face.fields, "sha1": sha1, "filepath": image_relpath(sha1),
                       "width": width, "height": height, "channels": channels}
                for name in COLUMNS:
                    columns[name].append(row.get(name))
            if progress is not None:
                progress(len(batch))

        items = iter(source)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            while chunk := list(islice(items, _BATCH)):
                batch: list[Face] = []
                for item in chunk:
                    if isinstance(item, Face):
                        if item.fields["id"] in seen_ids:
                            report.skips.append(Skip(item.fields["origin"], "duplicate id",
                                                     f"{item.fields['id']} appears more than once"))
                            continue
                        seen_ids.add(item.fields["id"])
                        batch.append(item)
                    elif isinstance(item, Skip):
                        report.skips.append(item)
                    else:
                        relabels.append(item)
                if progress is not None:
                    progress(len(chunk) - len(batch))
                pending.append((batch, pool.submit(self._write_images, batch)))
                while len(pending) >= _IN_FLIGHT:
                    collect(*pending.pop(0))
            for batch, future in pending:
                collect(batch, future)
        return pa.Table.from_pydict(columns, schema=ROW_SCHEMA), relabels

    def _write_images(self, faces: list[Face]) -> tuple[list[Stored], int]:
        """Decode (if deferred), hash and store each face's image; runs in a worker thread.
        Returns what was stored for each face and how many new image files were written."""
        results: list[Stored] = []
        written = 0
        root = str(self.root)
        for face in faces:
            try:
                pixels = face.image() if callable(face.image) else face.image
            except UnreadableImage as error:
                results.append(Skip(face.fields["origin"], error.reason, str(error)))
                continue
            sha1 = pixel_sha1(pixels)
            target = os.path.join(root, image_relpath(sha1))
            if not os.path.exists(target) and _atomic_write_png(pixels, target):
                written += 1
            height, width = pixels.shape[:2]
            results.append((sha1, (height, width, 1 if pixels.ndim == 2 else pixels.shape[2])))
        return results, written

    def _apply_relabels(self, existing: pa.Table, relabels: list[Relabel], report: IngestReport) -> pa.Table:
        if not relabels:
            return ROW_SCHEMA.empty_table()
        by_id = {relabel.id: relabel for relabel in relabels}
        matched = existing.filter(pc.is_in(existing["id"], pa.array(list(by_id), pa.string())))
        rows = matched.to_pylist()
        for row in rows:
            relabel = by_id.pop(row["id"])
            if "flags" in relabel.fields:  # a source owns only its own "<source>-" flags: keep the others
                others = [flag for flag in row["flags"] or () if not flag.startswith(f"{report.source}-")]
                relabel = replace(relabel, fields={**relabel.fields, "flags": [*others, *relabel.fields["flags"]]})
            row.update(relabel.fields)
            if relabel.restore_original_label:
                original = canonical_label(row["native_label"], SOURCE_LABEL_MAPS.get(row["source"]))
                if original is not None:
                    row.update(label=original, label_source="original")
        for missing in by_id.values():
            report.skips.append(Skip(missing.location, "no matching row",
                                     f"{missing.id} is not in the workspace; ingest its images first"))
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def _commit_skips(self, report: IngestReport) -> None:
        previous = self.skips()
        same_run = pc.and_(pc.equal(previous["source"], report.source), pc.equal(previous["input"], report.input))
        new = pa.Table.from_pydict(
            {
                "source": [report.source] * len(report.skips),
                "input": [report.input] * len(report.skips),
                "location": [skip.location for skip in report.skips],
                "reason": [skip.reason for skip in report.skips],
                "detail": [skip.detail for skip in report.skips],
            },
            schema=SKIP_SCHEMA,
        )
        _atomic_write_parquet(pa.concat_tables([previous.filter(pc.invert(same_run)), new]), self.skips_path)

    def counts(self, by: Iterable[str] = ("source", "source_split", "label")) -> pa.Table:
        """Row counts grouped by the given columns."""
        keys = list(by)
        return self.manifest().group_by(keys).aggregate([("id", "count")]).rename_columns([*keys, "rows"]).sort_by(
            [(key, "ascending") for key in keys])


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    """A workspace table (empty when absent), or a :class:`WorkspaceError` naming the damaged file."""
    if not path.exists():
        return schema.empty_table()
    try:
        return pq.read_table(path, schema=schema)
    except (pa.ArrowException, OSError) as error:
        raise WorkspaceError(f"{path} is damaged or truncated and cannot be read ({error})",
                             "restore it from a backup, or move it aside and re-run `fercurate ingest` for each "
                             "source (images already stored are reused)") from None


def _open_reader_lock(path: Path) -> Any:
    """The lock file for a reader: created if the workspace is writable, else opened read-only
    (flock needs no write access); None in a read-only workspace without one (no writer can be
    using it)."""
    try:
        return open(path, "a+")
    except OSError as error:
        if not isinstance(error, PermissionError) and error.errno != errno.EROFS:
            raise
        return open(path) if path.exists() else None


def _acquire(handle: Any, kind: int, timeout: float, root: Path) -> None:
    """flock ``handle`` (``LOCK_SH`` or ``LOCK_EX``), polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise WorkspaceLocked(
                    f"{root} is being written by another fercurate process; "
                    "wait for it to finish or use another --workspace"
                ) from None
            time.sleep(0.1)


def _atomic_write_parquet(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary)


def _atomic_write_png(pixels: np.ndarray, target: str) -> bool:
    """Write pixels as PNG under a temporary name, then link it into place unless ``target`` exists
    already; returns whether this call created it (so concurrent writers of one image count it once).
    Images that fit one filesystem block either way are stored uncompressed, twice as fast to write."""
    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    level = 0 if pixels.size <= _SMALL_IMAGE_BYTES else 3
    ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise OSError(f"could not encode {target} as PNG")
    temporary = str(temporary_name(target))
    try:
        try:
            with open(temporary, "wb") as handle:
                handle.write(encoded.data)
        except FileNotFoundError:  # first image of its prefix folder
            os.makedirs(os.path.dirname(target), exist_ok=True)
            return _atomic_write_png(pixels, target)
        try:
            os.link(temporary, target)  # fails if another writer got there first: exactly one creates it
        except FileExistsError:
            return False
        except OSError as error:  # a filesystem without hard links (FAT, some network shares)
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            os.replace(temporary, target)
        return True
    finally:
        Path(temporary).unlink(missing_ok=True)
