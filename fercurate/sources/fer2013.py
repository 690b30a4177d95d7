"""FER2013 (Goodfellow et al., 2013): the original ``fer2013.csv`` and the Kaggle image-folder release.

``fer2013.csv`` (header ``emotion,pixels,Usage``, or ``emotion, Usage, pixels`` in the
``icml_face_data.csv`` copy) is about 290 MB; it is streamed in blocks and each block's pixel
strings are parsed at once with numpy, so memory stays flat and every bad row is reported with
its line number. Row ``i`` becomes ``fer2013/<Usage>/<i:05d>``, the key FER+ joins on. Line ends may
be LF, CRLF or bare CR (old Mac tools), and a UTF-8 byte-order mark before the header is ignored.

The image-folder release (``train/<class>/Training_<n>.jpg``, ``test/<class>/PublicTest_<n>.jpg``
and ``PrivateTest_<n>.jpg``, as a folder or as the .tar.gz it is downloaded in) takes its split
from the file-name prefix, since both test splits share one folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.base import DEFAULT_MAX_MEMBER_BYTES, Face, Item, Skip, Source, SourceError, image_loader, is_archive, iter_image_files

SIDE = 48
PIXELS = SIDE * SIDE
USAGES = ("Training", "PublicTest", "PrivateTest")
CSV_LABELS = SOURCE_LABEL_MAPS["fer2013"]
FOLDER_LABELS = SOURCE_LABEL_MAPS["fer2013-folder"]
_BLOCK_BYTES = 1 << 22
_NEWLINE, _COMMA, _CR = 10, 44, 13
_NL_BYTE, _CR_BYTE, _BOM = b"\n", b"\r", b"\xef\xbb\xbf"
_DISALLOWED_IN_PIXELS = np.ones(256, dtype=bool)
_DISALLOWED_IN_PIXELS[[ord(c) for c in "0123456789 \t\r\""]] = False


class Fer2013Csv(Source):
    """The original ``fer2013.csv`` (either header variant), streamed.

    ``dataset`` names the rows' source; the embedded demo writes its faces in this format and
    ingests them through this reader under the name ``demo``.
    """

    name = "fer2013"

    def __init__(self, path: str | Path, dataset: str = "fer2013") -> None:
        super().__init__(path)
        self.dataset = self.name = dataset
        if not self.path.is_file():
            raise SourceError(f"{self.path} is not a file: give fer2013.csv or the image-folder release")
        with open(self.path, "rb") as handle:
            head = handle.read(_BLOCK_BYTES)
        # Old Mac tools end lines with a bare CR: such a file is read with CR as its line end.
        self.cr_only = _CR_BYTE in head and _NL_BYTE not in head
        newline = _CR_BYTE if self.cr_only else _NL_BYTE
        first_line = head.split(newline, 1)[0]
        self.data_offset = len(first_line) + (len(newline) if newline in head else 0)
        header = first_line.removeprefix(_BOM).decode("utf-8", errors="replace").rstrip("\r")
        self.columns = [column.strip().strip('"').lower() for column in header.split(",")]
        missing = {"emotion", "pixels"} - set(self.columns)
        if missing:
            shown = header if len(header) <= 120 else f"{header[:120]}... ({len(header)} characters)"
            raise SourceError(
                f"{self.path.name} starts with {shown!r}, not fer2013.csv's header emotion,pixels,Usage "
                f"(missing: {', '.join(sorted(missing))})", "is this the right file? add the header line if it has none"
            )

    def options(self) -> dict[str, Any]:
        return {"format": "fer2013.csv", "dataset": self.dataset}

    def size_hint(self) -> int | None:
        # FER2013 rows are about 8.1 kB: close enough for a progress bar, exact counts follow.
        return max(1, self.path.stat().st_size // 8100)

    def __iter__(self) -> Iterator[Item]:
        row = 0
        line = 2  # 1-based file line of the first data row
        with open(self.path, "rb") as handle:
            handle.seek(self.data_offset)
            carry = b""
            while True:
                chunk = handle.read(_BLOCK_BYTES)
                if self.cr_only:
                    chunk = chunk.replace(_CR_BYTE, _NL_BYTE)
                block = carry + chunk
                if not chunk:
                    if block:
                        yield from self._parse_block(block, row, line)
                    return
                cut = block.rfind(b"\n") + 1
                block, carry = block[:cut], block[cut:]
                if block:
                    items = list(self._parse_block(block, row, line))  # one item per non-blank line
                    yield from items
                    row += len(items)
                    line += block.count(b"\n")

    def _parse_block(self, block: bytes, first_row: int, first_line: int) -> Iterator[Item]:
        """Parse whole lines: fields are split and pixel strings decoded for all lines at once."""
        buf = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(buf == _NEWLINE)
        if ends.size == 0 or ends[-1] != buf.size - 1:
            ends = np.append(ends, buf.size)  # a last line without a newline
        starts = np.concatenate(([0], ends[:-1] + 1))
        line_numbers = first_line + np.arange(starts.size)
        stops = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == _CR))  # drop \r of \r\n
        nonblank = stops > starts
        starts, stops, line_numbers = starts[nonblank], stops[nonblank], line_numbers[nonblank]

        n_fields = len(self.columns)
        commas = np.flatnonzero(buf == _COMMA)
        first_comma = np.searchsorted(commas, starts)
        field_count = np.searchsorted(commas, stops) - first_comma + 1
        well_formed = field_count == n_fields
        padded = np.append(commas, buf.size)  # so malformed lines index safely

        def span(column: str) -> tuple[np.ndarray, np.ndarray]:
            j = self.columns.index(column)
            low = starts if j == 0 else padded[np.minimum(first_comma + j - 1, commas.size)] + 1
            high = stops if j == n_fields - 1 else padded[np.minimum(first_comma + j, commas.size)]
            return np.where(well_formed, low, starts), np.where(well_formed, high, starts)

        pixel_low, pixel_high = span("pixels")
        bad_positions = np.flatnonzero(_DISALLOWED_IN_PIXELS[buf])  # few: commas, letters, newlines
        non_numeric = np.searchsorted(bad_positions, pixel_high) > np.searchsorted(bad_positions, pixel_low)

        digit = (buf - 48) < 10  # uint8 wrap-around: True only for '0'..'9'
        token_start = np.flatnonzero(digit[1:] > digit[:-1]) + 1  # lines start with the emotion,
        token_stop = np.flatnonzero(digit[:-1] > digit[1:]) + 1  # never with pixels; they end in \n
        if digit[-1]:
            token_stop = np.append(token_stop, buf.size)
        if digit[0]:
            token_stop = token_stop[1:] if token_stop.size > token_start.size else token_stop
        first_token = np.searchsorted(token_start, pixel_low)
        pixel_count = np.searchsorted(token_start, pixel_high) - first_token
        good = well_formed & ~non_numeric & (pixel_count == PIXELS)
        token = first_token[good][:, None] + np.arange(PIXELS)  # (good lines, 2304) token indices
        stop = token_stop[token]
        length = stop - token_start[token]
        values = buf[stop - 1].astype(np.int16) - 48
        values += np.where(length >= 2, buf[stop - 2].astype(np.int16) - 48, 0) * 10
        values += np.where(length >= 3, buf[stop - 3].astype(np.int16) - 48, 0) * 100
        in_range = ((length <= 3) & (values <= 255)).all(axis=1)
        out_of_range = np.zeros(starts.size, dtype=bool)
        out_of_range[np.flatnonzero(good)[~in_range]] = True
        images = values[in_range].astype(np.uint8).reshape(-1, SIDE, SIDE)
        image_index = np.cumsum(good & ~out_of_range) - 1

        emotion_low, emotion_high = span("emotion")
        has_usage = "usage" in self.columns
        usage_low, usage_high = span("usage") if has_usage else (starts, starts)
        location_prefix = self.path.name
        well_formed, non_numeric, out_of_range = well_formed.tolist(), non_numeric.tolist(), out_of_range.tolist()
        field_count, pixel_count, image_index = field_count.tolist(), pixel_count.tolist(), image_index.tolist()
        emotion_low, emotion_high = emotion_low.tolist(), emotion_high.tolist()
        usage_low, usage_high, line_numbers = usage_low.tolist(), usage_high.tolist(), line_numbers.tolist()
        for i in range(len(well_formed)):
            row = first_row + i
            location = f"{location_prefix}:{line_numbers[i]}"
            if not well_formed[i]:
                yield Skip(location, "malformed row", f"{field_count[i]} fields, expected {n_fields}")
                continue
            if non_numeric[i]:
                yield Skip(location, "non-numeric pixels", "pixels must be space-separated integers 0..255")
                continue
            if pixel_count[i] != PIXELS:
                yield Skip(location, "wrong pixel count", f"{pixel_count[i]} values, expected {PIXELS} (48x48)")
                continue
            if out_of_range[i]:
                yield Skip(location, "pixel value out of range", "pixels must be integers 0..255")
                continue
            code = block[emotion_low[i]:emotion_high[i]].strip(b' "\t').decode("utf-8", errors="replace")
            if code not in CSV_LABELS:
                yield Skip(location, "unknown emotion code", f"{code!r} is not one of 0..6")
                continue
            usage = block[usage_low[i]:usage_high[i]].strip(b' "\t').decode("utf-8", errors="replace")
            if has_usage and usage not in USAGES:
                yield Skip(location, "unknown usage", f"{usage!r} is not one of {', '.join(USAGES)}")
                continue
            yield Face(
                fields={
                    "id": f"{self.dataset}/{usage}/{row:05d}" if has_usage else f"{self.dataset}/{row:05d}",
                    "source": self.dataset,
                    "source_split": usage if has_usage else None,
                    "origin": location,
                    "label": CSV_LABELS[code],
                    "native_label": code,
                },
                image=images[image_index[i]],
            )


class Fer2013Folder(Source):
    """The Kaggle image-folder release of FER2013, as a folder or as its .tar/.tar.gz/.zip."""

    name = "fer2013"

    def options(self) -> dict[str, Any]:
        return {"format": "image-folder", "max_member_bytes": self.max_member_bytes}

    def size_hint(self) -> int | None:
        return None if is_archive(self.path) else 35_887

    def __iter__(self) -> Iterator[Item]:
        for image_file in iter_image_files(self.path, self.max_member_bytes):
            if isinstance(image_file, Skip):
                yield image_file
                continue
            parts = Path(image_file.relpath).parts
            location = image_file.relpath
            stem = Path(image_file.relpath).stem
            usage = stem.split("_", 1)[0]
            if len(parts) < 2 or parts[-2] not in FOLDER_LABELS:
                folder = parts[-2] if len(parts) >= 2 else ""
                yield Skip(location, "unknown class folder",
                           f"{folder!r} is not one of {', '.join(FOLDER_LABELS)}")
                continue
            if usage not in USAGES:
                yield Skip(location, "unrecognised file name",
                           f"expected Training_<n>, PublicTest_<n> or PrivateTest_<n>, got {stem!r}")
                continue
            yield Face(
                fields={
                    "id": f"fer2013/{usage}/{parts[-2]}/{stem}",  # names repeat across class folders
                    "source": "fer2013",
                    "source_split": usage,
                    "origin": location,
                    "label": FOLDER_LABELS[parts[-2]],
                    "native_label": parts[-2],
                },
                image=image_loader(image_file),
            )


def open_fer2013(path: str | Path, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Source:
    """The right FER2013 reader for ``path``: a .csv file, or the image-folder release (whose image
    files and archive members over ``max_member_bytes`` are skipped unread)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return Fer2013Csv(path)
    return Fer2013Folder(path, max_member_bytes)
