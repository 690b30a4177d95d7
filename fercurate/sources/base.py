"""The contract every source keeps, and the small helpers they share.

A source reads one dataset in the layout its users download and yields, in order:

- :class:`Face` for each face it found: the schema columns it knows plus the pixels (or a
  function that decodes them, so the workspace can decode in parallel);
- :class:`Skip` for anything it could not use, with where and why: nothing disappears silently;
- :class:`Relabel` for new labels of rows already in a workspace (FER+ onto FER2013).

Fatal problems with the input as a whole (a path that does not exist, an empty folder, a CSV
without the expected header) raise :class:`SourceError` with a message that says what to do.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fercurate.errors import SourceError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm"})
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class UnreadableImage(Exception):
    """One image could not be decoded (corrupt, truncated or not an image)."""


@dataclass(slots=True)
class Face:
    """One face found by a source.

    ``fields`` holds the schema columns the source knows (at least ``id``, ``source``,
    ``origin``, ``label`` and ``native_label``); ``image`` is a uint8 array (H x W gray or
    H x W x 3 RGB) or a function returning one, which may raise :class:`UnreadableImage`.
    """

    fields: dict[str, Any]
    image: np.ndarray | Callable[[], np.ndarray]


@dataclass(frozen=True, slots=True)
class Skip:
    """Something a source could not use: ``location`` (file, or file:row), a short ``reason``
    that groups alike skips in summaries, and the specific ``detail``."""

    location: str
    reason: str
    detail: str = ""


@dataclass(slots=True)
class Relabel:
    """New values for columns of a row that is already in the workspace (matched by ``id``).

    ``restore_original_label`` sets the label back to what the row's own source said (its
    ``native_label`` through that source's map), so re-running with another label rule is safe.
    """

    id: str
    location: str
    fields: dict[str, Any] = field(default_factory=dict)
    restore_original_label: bool = False


Item = Face | Skip | Relabel


class Source(ABC):
    """A reader of one dataset layout. Construct it with the input path and options (checked at
    once, raising :class:`SourceError`), then iterate it for :data:`Item` values."""

    #: The name used on the command line (``fercurate ingest NAME PATH``).
    name: str

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise SourceError(f"{self.path} does not exist: give the path of the {self.name} download")

    @abstractmethod
    def __iter__(self) -> Iterator[Item]:
        """Yield every face, skip and relabel found in the input."""

    def size_hint(self) -> int | None:
        """How many items the input holds, if cheap to know (for progress bars)."""
        return None

    def options(self) -> dict[str, Any]:
        """The options this reader was built with, recorded in the workspace's history."""
        return {}


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to uint8 pixels: H x W for gray (palette images whose palette is gray
    included), H x W x 3 RGB otherwise; alpha is dropped, 16-bit is scaled to 8-bit."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "P":
                palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
                gray_palette = bool((palette == palette[:, :1]).all())
                image = image.convert("L" if gray_palette else "RGB")
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(image, dtype=np.float64)
                return np.clip(wide / max(wide.max(), 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            elif image.mode in ("1", "LA", "L"):
                image = image.convert("L")
            else:
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(str(error) or type(error).__name__) from error


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file inside a folder or an archive: its path relative to the root, and a function
    that reads its bytes (deferred for folders, so reads happen in the workspace's threads)."""

    relpath: str
    read: Callable[[], bytes]


def is_archive(path: Path) -> bool:
    """Whether ``path`` is an archive fercurate reads without unpacking it."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_image_files(root: Path) -> Iterator[ImageFile]:
    """Every image file under a folder, or inside a .tar/.tar.gz/.zip archive, in sorted order
    (folders) or archive order (archives). Raises :class:`SourceError` when there are none."""
    found = False
    if is_archive(root):
        items = _iter_archive(root)
    elif root.is_dir():
        items = (
            ImageFile(path.relative_to(root).as_posix(), path.read_bytes)
            for path in sorted(root.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )
    else:
        raise SourceError(f"{root} is neither a folder nor a .tar/.tar.gz/.zip archive of images")
    for item in items:
        found = True
        yield item
    if not found:
        raise SourceError(f"{root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _iter_archive(path: Path) -> Iterator[ImageFile]:
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                    data = archive.read(info)
                    yield ImageFile(info.filename, lambda data=data: data)
        return
    with tarfile.open(path, mode="r|*") as archive:  # streamed: one pass, no random access
        for member in archive:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield ImageFile(member.name, lambda data=data: data)


def image_loader(image_file: ImageFile) -> Callable[[], np.ndarray]:
    """A deferred decoder for one image file."""
    return lambda: decode_image(image_file.read())
