"""CK+ (Lucey et al., 2010): the original distribution and the common CK+48 crops.

The original release holds 593 sequences of 123 subjects, each running from a neutral onset
frame to the expression's apex::

    cohn-kanade-images/S005/001/S005_001_00000001.png ...
    Emotion/S005/001/S005_001_00000011_emotion.txt      one float code, on the last frame
    FACS/S005/001/S005_001_00000011_facs.txt            rows: AU number, intensity
    Landmarks/S005/001/S005_001_00000001_landmarks.txt  68 rows of x y, per frame

Only 327 sequences carry an emotion; the others are reported as skipped, not dropped silently.
A malformed Emotion file skips its sequence; a malformed FACS or Landmarks file is a counted skip
too, but its faces are still ingested, without action units or landmarks. Skips name files by
their path relative to the input folder.
Which frames become rows is the frame policy (:class:`FramePolicy`). Every row keeps its
subject and sequence, its frame position, the frame's landmarks and, on the coded frame, its
FACS action units.

CK+48 (``<class>/S005_001_00000011.png``, 48x48 crops of each labelled sequence's last three
frames) is read as a folder or archive; its ids are ``ckplus48/...`` so that both releases can
live in one workspace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.base import DEFAULT_MAX_MEMBER_BYTES, Face, ImageFile, Item, Skip, Source, SourceError, image_loader, iter_image_files

EMOTION_CODES = SOURCE_LABEL_MAPS["ckplus"]
CK48_LABELS = SOURCE_LABEL_MAPS["ckplus48"]
FRAME_NAME = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})$")
_LAYOUT_FOLDERS = ("cohn-kanade-images", "Emotion", "FACS", "Landmarks")


@dataclass(frozen=True)
class FramePolicy:
    """Which frames of a labelled sequence become rows.

    - ``apex``: the last (apex) frame only;
    - ``last:N``: the last N frames, all with the sequence's emotion;
    - ``onset-apex``: the first frame as neutral plus the apex frame;
    - ``all``: every frame with the sequence's emotion, ``intensity`` rising 0 -> 1 to the apex.
    """

    kind: str
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> FramePolicy:
        """Read a policy as written on the command line: apex, last:N, onset-apex or all."""
        match = re.fullmatch(r"last:?(\d+)", text.strip())
        if match and int(match.group(1)) >= 1:
            return cls("last", int(match.group(1)))
        if text in ("apex", "onset-apex", "all"):
            return cls(text)
        raise SourceError(f"unknown frame policy {text!r}: use apex, last:N (N >= 1), onset-apex or all")

    def frames(self, count: int) -> list[int]:
        """Positions (0-based) of the chosen frames in a sequence of ``count`` frames."""
        if self.kind == "apex":
            return [count - 1]
        if self.kind == "last":
            return list(range(max(0, count - self.count), count))
        if self.kind == "onset-apex":
            return [0, count - 1] if count > 1 else [0]
        return list(range(count))

    def __str__(self) -> str:
        return f"last:{self.count}" if self.kind == "last" else self.kind


def read_number_rows(path: Path, min_columns: int = 1) -> np.ndarray:
    """The whitespace-separated numbers of a CK+ text file as a 2-D float array of at least
    ``min_columns`` columns. Raises ValueError (UnicodeDecodeError included) naming the file
    when it is anything else: callers turn that into a counted skip."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not rows or len({len(row) for row in rows}) != 1 or len(rows[0]) < min_columns:
        raise ValueError(f"{path.name} is not a table of numbers with at least {min_columns} columns")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path.name} holds a value that is not a number ({error})") from None
    if not np.isfinite(table).all():
        raise ValueError(f"{path.name} holds a value that is not a finite number")
    return table


class CkPlus(Source):
    """The original CK+ distribution (a folder holding cohn-kanade-images/, Emotion/, ...)."""

    name = "ckplus"

    def __init__(self, path: str | Path, frames: str | FramePolicy = "apex") -> None:
        super().__init__(path)
        self.policy = frames if isinstance(frames, FramePolicy) else FramePolicy.parse(frames)
        self.folders = {name: _find_folder(self.path, name) for name in _LAYOUT_FOLDERS}
        if self.folders["cohn-kanade-images"] is None:
            raise SourceError(f"{self.path} has no cohn-kanade-images/ folder: is it the CK+ download?")
        if self.folders["Emotion"] is None:
            raise SourceError(f"{self.path} has no Emotion/ folder: CK+ labels come from Emotion/*_emotion.txt")

    def options(self) -> dict[str, Any]:
        return {"format": "original", "frames": str(self.policy)}

    def __iter__(self) -> Iterator[Item]:
        images_root = self.folders["cohn-kanade-images"]
        assert images_root is not None
        for sequence_dir in sorted(path for path in images_root.glob("S*/*") if path.is_dir()):
            yield from self._sequence(images_root, sequence_dir)

    def _sequence(self, images_root: Path, sequence_dir: Path) -> Iterator[Item]:
        subject, number = sequence_dir.parent.name, sequence_dir.name
        location = sequence_dir.relative_to(images_root.parent).as_posix()
        frames = sorted(path for path in sequence_dir.iterdir() if FRAME_NAME.match(path.stem) and path.is_file())
        emotion_files = sorted(self._label_dir("Emotion", subject, number).glob("*_emotion.txt"))
        if not frames:
            yield Skip(location, "missing images", "the sequence folder holds no S###_###_########.png frames")
            return
        if not emotion_files:
            yield Skip(location, "unlabelled sequence", "no Emotion file (CK+ labels 327 of its 593 sequences)")
            return
        emotion_location = self._relative(emotion_files[-1])
        try:
            code = str(int(read_number_rows(emotion_files[-1])[0, 0]))
        except ValueError as error:
            yield Skip(emotion_location, "unreadable label file", f"{error}; the sequence is skipped")
            return
        if code not in EMOTION_CODES:
            yield Skip(emotion_location, "unknown emotion code", f"{code} is not one of 0..7")
            return
        action_units, skip = self._action_units(subject, number)
        if skip is not None:
            yield skip
        count = len(frames)
        for position in self.policy.frames(count):
            frame = frames[position]
            onset_as_neutral = self.policy.kind == "onset-apex" and position == 0 and count > 1
            landmarks, skip = self._landmarks(subject, number, frame.stem)
            if skip is not None:
                yield skip
            yield Face(
                fields={
                    "id": f"ckplus/{frame.stem}",
                    "source": "ckplus",
                    "origin": frame.relative_to(images_root.parent).as_posix(),
                    "label": "neutral" if onset_as_neutral else EMOTION_CODES[code],
                    "native_label": "0" if onset_as_neutral else code,
                    "label_source": "ckplus-onset-frame" if onset_as_neutral else "original",
                    "subject_id": subject,
                    "sequence_id": f"{subject}_{number}",
                    "frame_index": int(FRAME_NAME.match(frame.stem).group(3)),  # type: ignore[union-attr]
                    "frame_count": count,
                    "intensity": position / (count - 1) if count > 1 else 1.0,
                    "landmarks": landmarks,
                    "action_units": action_units if position == count - 1 else None,
                },
                image=image_loader(ImageFile(frame.name, frame.read_bytes)),
            )

    def _label_dir(self, kind: str, subject: str, number: str) -> Path:
        root = self.folders[kind]
        return root / subject / number if root is not None else Path("/nonexistent")

    def _relative(self, path: Path) -> str:
        """``path`` relative to the input root, as skips record it."""
        return path.relative_to(self.path).as_posix()

    def _action_units(self, subject: str, number: str) -> tuple[list[tuple[int, float]] | None, Skip | None]:
        """The sequence's FACS codes, or None with a skip when the file is malformed: the faces are
        still ingested (their emotion comes from Emotion/), only without action units."""
        files = sorted(self._label_dir("FACS", subject, number).glob("*_facs.txt"))
        if not files:
            return None, None
        try:
            table = read_number_rows(files[-1], min_columns=2)
        except ValueError as error:
            return None, Skip(self._relative(files[-1]), "malformed FACS file",
                              f"{error}; the faces are ingested without action units")
        return [(int(au), float(intensity)) for au, intensity in table[:, :2]], None

    def _landmarks(self, subject: str, number: str, stem: str) -> tuple[list[list[float]] | None, Skip | None]:
        """The frame's landmarks, or None with a skip when the file is malformed: the face is still
        ingested, only without landmarks."""
        path = self._label_dir("Landmarks", subject, number) / f"{stem}_landmarks.txt"
        if not path.is_file():
            return None, None
        try:
            return read_number_rows(path, min_columns=2)[:, :2].tolist(), None
        except ValueError as error:
            return None, Skip(self._relative(path), "malformed landmarks file",
                              f"{error}; the face is ingested without landmarks")


class CkPlus48(Source):
    """The CK+48 release: ``<class>/S###_###_########.png`` crops, as a folder or archive."""

    name = "ckplus"

    def options(self) -> dict[str, Any]:
        return {"format": "CK+48", "max_member_bytes": self.max_member_bytes}

    def __iter__(self) -> Iterator[Item]:
        found: list[tuple[ImageFile, str, re.Match[str]]] = []
        for image_file in iter_image_files(self.path, self.max_member_bytes):
            if isinstance(image_file, Skip):
                yield image_file
                continue
            parts = Path(image_file.relpath).parts
            folder = parts[-2] if len(parts) >= 2 else ""
            match = FRAME_NAME.match(Path(image_file.relpath).stem)
            if folder not in CK48_LABELS:
                yield Skip(image_file.relpath, "unknown class folder",
                           f"{folder!r} is not one of {', '.join(CK48_LABELS)}")
            elif match is None:
                yield Skip(image_file.relpath, "unrecognised file name", "expected S###_###_########.png")
            else:
                found.append((image_file, folder, match))
        last_frame: dict[str, int] = {}  # CK+48 keeps each sequence's last frames: the last is its length
        for _, _, match in found:
            sequence = f"{match.group(1)}_{match.group(2)}"
            last_frame[sequence] = max(last_frame.get(sequence, 0), int(match.group(3)))
        for image_file, folder, match in found:
            sequence = f"{match.group(1)}_{match.group(2)}"
            yield Face(
                fields={
                    "id": f"ckplus48/{match.group(0)}",
                    "source": "ckplus",
                    "origin": image_file.relpath,
                    "label": CK48_LABELS[folder],
                    "native_label": folder,
                    "subject_id": match.group(1),
                    "sequence_id": sequence,
                    "frame_index": int(match.group(3)),
                    "frame_count": last_frame[sequence],
                },
                image=image_loader(image_file),
            )


def open_ckplus(path: str | Path, frames: str = "apex", max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Source:
    """The right CK+ reader for ``path``: the original distribution, or the CK+48 release."""
    path = Path(path).expanduser()
    if path.is_dir() and _find_folder(path, "cohn-kanade-images") is not None:
        return CkPlus(path, frames=frames)
    if frames != "apex" and path.exists():  # a missing path is reported as such by the reader
        raise SourceError("--frames applies to the original CK+ distribution; CK+48 holds fixed frames")
    return CkPlus48(path, max_member_bytes)


def _find_folder(root: Path, name: str, depth: int = 3) -> Path | None:
    """The folder called ``name`` at most ``depth`` levels under ``root`` (downloads nest them)."""
    if not root.is_dir():
        return None
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if folder.name == name:
                return folder
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir() and
                       not FRAME_NAME.match(child.name) and not re.fullmatch(r"S\d{3}", child.name))
    return None
