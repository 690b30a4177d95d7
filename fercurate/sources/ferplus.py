"""FER+ (Barsoum et al., 2016): ten crowd votes per FER2013 image, joined onto FER2013 rows.

Row ``i`` of ``fer2013new.csv`` re-labels row ``i`` of ``fer2013.csv``, so the votes join onto
the rows ``fer2013/<Usage>/<i:05d>`` that ingesting fer2013.csv created. FER+'s per-split
``label.csv`` files (``FER2013Train/Valid/Test``) name the row in ``fer<i:07d>.png``.

Votes are kept in ``label_votes`` whatever the label mode:

- ``original``: the FER2013 label stays;
- ``majority``: the emotion with the most votes (a tie, or more votes for unknown or not-a-face,
  leaves the FER2013 label and flags ``ferplus-no-majority``);
- ``strict-majority``: the emotion with more than half of all votes, else as above.

Flags, never silent drops: ``ferplus-not-face`` (NF has the most votes), ``ferplus-unknown``
(unknown has the most votes), ``ferplus-no-image`` (FER+ left the image name empty: it excluded
the image), ``ferplus-no-majority``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fercurate.sources.base import Item, Relabel, Skip, Source, SourceError

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
EMOTIONS = VOTE_COLUMNS[:8]
LABEL_MODES = ("original", "majority", "strict-majority")
LABEL_FILE_SPLITS = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}
IMAGE_NAME = re.compile(r"^fer(\d{7})\.png$")


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

    def __init__(self, path: str | Path, label_mode: str = "majority") -> None:
        super().__init__(path)
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
            with open(file, newline="") as handle:
                first = handle.readline()
                handle.seek(0)
                if first.lower().startswith("usage"):
                    yield from self._rows_with_header(file, csv.reader(handle))
                else:
                    yield from self._label_csv_rows(file, csv.reader(handle))

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
        label, flags = ferplus_label(votes, self.label_mode)
        if no_image:
            flags.append("ferplus-no-image")
        fields: dict[str, Any] = {"label_votes": dict(zip(VOTE_COLUMNS, votes.tolist())), "flags": flags}
        if label is not None:
            fields.update(label=label, label_source=f"ferplus-{self.label_mode}")
        return Relabel(row_id, location, fields, restore_original_label=label is None)
