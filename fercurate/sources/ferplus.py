"""FER+ (Barsoum et al., 2016): ten crowd votes per FER2013 image, joined onto FER2013 rows.

Row ``i`` of ``fer2013new.csv`` re-labels row ``i`` of ``fer2013.csv``, so the votes join onto
the rows ``fer2013/<Usage>/<i:05d>`` that ingesting fer2013.csv created. FER+'s per-split
``label.csv`` files (``FER2013Train/Valid/Test``) name the row in ``fer<i:07d>.png``.

Votes are kept in ``label_votes`` whatever the label mode:

- ``original``: the FER2013 label stays;
- ``majority``: the emotion with the most votes (a tie, or more votes for unknown or not-a-face,
  leaves the FER2013 label and flags ``ferplus-no-majority``);
- ``strict-majority``: the emotion with more than half of all votes, else as above.

Joining, checked (never blind): FER+ names release rows, so :meth:`FerPlus.resolve` maps each
release row onto the workspace's FER2013 row that *is* that face, using the shipped table of the
original release (:mod:`fercurate.sources.fer2013_release`). A workspace row claims a release row
by its id (``fer2013/<Usage>/<row>`` from fer2013.csv, or ``fer2013/<Usage>/<class>/<stem>`` from
the image-folder release); the claim stands when the row's image has the release row's pHash.
Rows whose claim fails are matched by content (the one nearest release pHash of the same usage);
rows that match nothing, or several rows alike, get no votes and a skip. When most claims fail
the CSV is not in the release's row order: the ingest is refused with a :class:`SourceError`.

Votes must be finite and non-negative (else the row is skipped as ``invalid votes``).

Flags, never silent drops: ``ferplus-not-face`` (NF has the most votes), ``ferplus-unknown``
(unknown has the most votes), ``ferplus-no-image`` (FER+ left the image name empty: it excluded
the image), ``ferplus-no-majority``, ``ferplus-no-votes`` (the workspace row's face is no release
row, or several alike: FER+ says nothing about it, so it keeps its FER2013 label).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fercurate.sources.base import Item, Relabel, Skip, Source, SourceError
from fercurate.sources.fer2013_release import USAGES, MATCH_DISTANCE, ReleaseTable, hamming, load_release, phash64

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
EMOTIONS = VOTE_COLUMNS[:8]
LABEL_MODES = ("original", "majority", "strict-majority")
LABEL_FILE_SPLITS = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}
IMAGE_NAME = re.compile(r"^fer(\d{7})\.png$")
CSV_ROW_ID = re.compile(r"^fer2013/(?:Training|PublicTest|PrivateTest)/(\d+)$")
FOLDER_ROW_ID = re.compile(r"^fer2013/(?:Training|PublicTest|PrivateTest)/([^/]+/[^/]+)$")
#: Below this share of verified claims, the workspace's FER2013 rows are not the release's order.
MIN_VERIFIED_SHARE = 0.5
#: The flag of a workspace FER2013 row that FER+ gives no votes (its face is no release row).
NO_VOTES_FLAG = "ferplus-no-votes"


def ferplus_label(votes: np.ndarray, mode: str) -> tuple[str | None, list[str]]:
    """The label a mode gives for ten votes (None: keep FER2013's), and the row's flags."""
    flags = []
    top = votes.max()
    if votes[9] == top and top > 0:
        flags.append("ferplus-not-face")
    if votes[8] == top and top > 0:
        flags.append("ferplus-unknown")
    if mode == "original":
        return None, flags
    winners = np.flatnonzero(votes[:8] == top)
    decided = len(winners) == 1 and not flags and top > 0
    if mode == "strict-majority":
        decided = decided and top * 2 > votes.sum()
    if not decided:
        return None, [*flags, "ferplus-no-majority"]
    return EMOTIONS[winners[0]], flags


class FerPlus(Source):
    """FER+ votes from ``fer2013new.csv``, from a ``label.csv``, or from FER+'s ``data`` folder."""

    name = "ferplus"

    def __init__(self, path: str | Path, label_mode: str = "majority", release: ReleaseTable | None = None) -> None:
        """``release`` is the table of the original FER2013 release (default: the shipped one)."""
        super().__init__(path)
        self.release = release
        if label_mode not in LABEL_MODES:
            raise SourceError(f"unknown FER+ label mode {label_mode!r}: use {', '.join(LABEL_MODES)}")
        self.label_mode = label_mode
        if self.path.is_dir():
            self.files = sorted(self.path.glob("FER2013*/label.csv"))
            if not self.files:
                raise SourceError(f"{self.path} holds no FER2013Train/Valid/Test/label.csv: give fer2013new.csv "
                                  "or FER+'s data folder")
        else:
            self.files = [self.path]

    def options(self) -> dict[str, Any]:
        return {"label_mode": self.label_mode}

    def __iter__(self) -> Iterator[Item]:
        for file in self.files:
            try:
                with open(file, newline="", encoding="utf-8-sig") as handle:  # a BOM is not part of the header
                    first = handle.readline()
                    handle.seek(0)
                    if first.lower().startswith("usage"):
                        yield from self._rows_with_header(file, csv.reader(handle))
                    else:
                        yield from self._label_csv_rows(file, csv.reader(handle))
            except UnicodeDecodeError as error:
                raise SourceError(f"{file} is not a text CSV ({error.reason} at byte {error.start})",
                                  "give FER+'s fer2013new.csv or a FER2013Train/Valid/Test/label.csv") from None

    def _rows_with_header(self, file: Path, reader: Iterator[list[str]]) -> Iterator[Item]:
        header = [column.strip() for column in next(reader)]
        missing = [column for column in ("Usage", "Image name", *VOTE_COLUMNS) if column not in header]
        if missing:
            raise SourceError(f"{file.name} is missing FER+ columns {missing}: is it fer2013new.csv?")
        index = {column: header.index(column) for column in header}
        for row, fields in enumerate(reader):
            location = f"{file.name}:{row + 2}"
            if len(fields) != len(header):
                yield Skip(location, "malformed row", f"{len(fields)} fields, expected {len(header)}")
                continue
            usage, image_name = fields[index["Usage"]].strip(), fields[index["Image name"]].strip()
            yield self._relabel(location, f"fer2013/{usage}/{row:05d}",
                                [fields[index[column]] for column in VOTE_COLUMNS], image_name == "")

    def _label_csv_rows(self, file: Path, reader: Iterator[list[str]]) -> Iterator[Item]:
        usage = LABEL_FILE_SPLITS.get(file.parent.name)
        if usage is None:
            raise SourceError(f"{file} is not in FER2013Train, FER2013Valid or FER2013Test: its split is unknown")
        for line, fields in enumerate(reader, start=1):
            location = f"{file.parent.name}/{file.name}:{line}"
            match = IMAGE_NAME.match(fields[0].strip()) if fields else None
            if match is None or len(fields) != 2 + len(VOTE_COLUMNS):
                yield Skip(location, "malformed row", "expected fer<7 digits>.png, box, 10 vote counts")
                continue
            yield self._relabel(location, f"fer2013/{usage}/{int(match.group(1)):05d}", fields[2:], False)

    def _relabel(self, location: str, row_id: str, vote_text: list[str], no_image: bool) -> Item:
        try:
            votes = np.asarray([float(value) for value in vote_text])
        except ValueError:
            return Skip(location, "non-numeric votes", f"votes must be numbers, got {vote_text}")
        if not (np.isfinite(votes).all() and (votes >= 0).all()):
            return Skip(location, "invalid votes", f"votes must be finite counts >= 0, got {vote_text}")
        label, flags = ferplus_label(votes, self.label_mode)
        if no_image:
            flags.append("ferplus-no-image")
        fields: dict[str, Any] = {"label_votes": dict(zip(VOTE_COLUMNS, votes.tolist())), "flags": flags}
        if label is not None:
            fields.update(label=label, label_source=f"ferplus-{self.label_mode}")
        return Relabel(row_id, location, fields, restore_original_label=label is None)

    def resolve(self, relabels: list[Relabel], manifest: pa.Table,
                image_path: Callable[[str], Path]) -> tuple[list[Relabel], list[Skip]]:
        """Retarget ``relabels`` (whose ids name release rows, ``fer2013/<Usage>/<row>``) onto the
        workspace rows that are those faces; see the module docstring for the rule. ``image_path``
        gives the absolute path of a manifest ``filepath``. Relabels of release rows that no
        workspace row is become ``no matching row`` skips. A workspace FER2013 row that matches no
        release row (or several) gets a skip that says why and a flags-only relabel: its FER2013
        label, no votes and the ``ferplus-no-votes`` flag, so export and train can leave it out."""
        rows = manifest.filter(pc.equal(manifest["source"], "fer2013")).select(["id", "filepath", "source_split"])
        if not relabels or rows.num_rows == 0:
            return relabels, []
        release = self.release if self.release is not None else load_release()
        ids = rows["id"].to_pylist()
        claimed = np.array(self._claims(ids, release), dtype=np.int64)
        usages = np.array([USAGES.index(usage) if usage in USAGES else -1
                           for usage in rows["source_split"].to_pylist()], dtype=np.int64)
        faces = [cv2.imread(str(image_path(path)), cv2.IMREAD_GRAYSCALE) for path in rows["filepath"].to_pylist()]
        readable = np.array([face is not None for face in faces])
        hashes = np.zeros(len(ids), dtype=np.uint64)
        if readable.any():
            hashes[readable] = phash64(np.stack([cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA)
                                                 for face in faces if face is not None]))
        target = np.where(claimed >= 0, claimed, 0)
        usage_ok = (claimed >= 0) & (release.usage[target] == usages)
        checkable = usage_ok & release.has_phash[target] & readable
        verified = checkable & (hamming(hashes, release.phash[target]) <= MATCH_DISTANCE)
        claims = int(((claimed >= 0) & release.has_phash[target]).sum())
        if claims and verified.sum() < MIN_VERIFIED_SHARE * claims:
            raise SourceError(
                f"only {int(verified.sum())} of {claims} FER2013 rows in the workspace show the face of the "
                "fer2013.csv row their id names: this fer2013.csv is not the original release's row order "
                "(a subset, reordered or edited copy), so FER+ votes cannot be joined by row",
                "ingest the original fer2013.csv (all 35,887 rows, unchanged order) or the Kaggle image-folder "
                "release, then ingest FER+ again")
        # A claim on a row without a release pHash (FER+ gave it no image, or it is not a face) can
        # not be checked: it stands on the verified order of the rest of the file, unless the face is
        # a release row whose own claimant failed (rows moved: the face is that row).
        unhashed = usage_ok & ~release.has_phash[target]
        displaced = np.zeros(len(release), dtype=bool)
        displaced[claimed[(claimed >= 0) & ~verified & release.has_phash[target]]] = True
        moved = np.flatnonzero(unhashed & readable)
        moved = moved[release.nearest(hashes[moved], usages[moved], ~displaced)[0] >= 0]
        by_position = verified | unhashed
        by_position[moved] = False
        exclude = np.zeros(len(release), dtype=bool)
        exclude[claimed[by_position]] = True
        unmatched = np.flatnonzero(~by_position & readable)
        nearest, unique = release.nearest(hashes[unmatched], usages[unmatched], exclude)
        matched = np.where(by_position, claimed, -1)
        matched[unmatched[(nearest >= 0) & unique]] = nearest[(nearest >= 0) & unique]
        ambiguous = set(unmatched[(nearest >= 0) & ~unique].tolist())
        no_votes = np.flatnonzero(matched < 0).tolist()
        unvoted = f"no FER+ votes, flagged {NO_VOTES_FLAG}"
        skips = [Skip(ids[index], "ambiguous release row",
                      f"its image matches several rows of the original fer2013.csv alike; {unvoted}")
                 if index in ambiguous else
                 Skip(ids[index], "no release row", f"its image is no row of the original fer2013.csv; {unvoted}")
                 for index in no_votes]
        targets: dict[int, list[str]] = {}
        for index in np.flatnonzero(matched >= 0):
            targets.setdefault(int(matched[index]), []).append(ids[index])
        resolved = [Relabel(ids[index], ids[index], {"label_votes": None, "flags": [NO_VOTES_FLAG]},
                            restore_original_label=True) for index in no_votes]
        for relabel in relabels:
            row = int(relabel.id.rsplit("/", 1)[1])
            found = targets.get(row)
            if found is None:
                skips.append(Skip(relabel.location, "no matching row",
                                  f"release row {row} ({relabel.id}) is not in the workspace; ingest FER2013 first"))
            resolved.extend(replace(relabel, id=workspace_id) for workspace_id in found or ())
        return resolved, skips

    @staticmethod
    def _claims(ids: list[str], release: ReleaseTable) -> list[int]:
        """The release row each workspace FER2013 id names (-1: none): the row number of a
        fer2013.csv id, or the shipped row of an image-folder file."""
        rows_of_keys = release.rows_of_keys()
        claims = []
        for row_id in ids:
            csv_row = CSV_ROW_ID.match(row_id)
            folder = FOLDER_ROW_ID.match(row_id) if csv_row is None else None
            row = int(csv_row.group(1)) if csv_row else rows_of_keys.get(folder.group(1), -1) if folder else -1
            claims.append(row if row < len(release) else -1)
        return claims
