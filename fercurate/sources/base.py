"""The contract every source keeps, and the small helpers they share.

A source reads one dataset in the layout its users download and yields, in order:

- :class:`Face` for each face it found: the schema columns it knows plus the pixels (or a
  function that decodes them, so the workspace can decode in parallel);
- :class:`Skip` for anything it could not use, with where and why: nothing disappears silently;
- :class:`Relabel` for new labels of rows already in a workspace (FER+ onto FER2013).

Fatal problems with the input as a whole (a path that does not exist, an empty folder, a CSV
without the expected header, an archive of which nothing is readable) raise :class:`SourceError`
with a message that says what to do. Everything else is per item: an image that cannot be decoded
or is too large, an archive member that is a link, has an unsafe name or is over
``max_member_bytes``, a symbolic link leaving the input folder, the damaged tail of a truncated
archive: each is a :class:`Skip` with its reason, and what was read before it is kept.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fercurate.errors import OptionError, SourceError

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm"})
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
#: The largest image file or archive member read (``max_member_bytes``); FER images are kilobytes.
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024


class UnreadableImage(Exception):
    """One image could not be decoded (corrupt, truncated or not an image); ``reason`` is the
    skip reason the workspace records for it."""

    reason = "unreadable image"


class ImageTooLarge(UnreadableImage):
    """An image over PIL's decompression-bomb limit: skipped before its pixels are decoded."""

    reason = "image too large"


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

    def __init__(self, path: str | Path, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> None:
        self.path = Path(path).expanduser()
        #: Image files and archive members larger than this are skipped unread (memory stays bounded).
        self.max_member_bytes = max_member_bytes
        if max_member_bytes < 1:
            raise OptionError(f"max_member_bytes must be at least 1, got {max_member_bytes}")
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

    def resolve(self, relabels: list[Relabel], manifest: pa.Table,
                image_path: Callable[[str], Path]) -> tuple[list[Relabel], list[Skip]]:
        """Point this source's relabels at the workspace rows they are meant for, given the
        current rows and where their images are; returns the relabels and skips for those that
        match no row. The default trusts the ids; FER+ checks each face against the release."""
        return relabels, []


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to uint8 pixels: H x W for gray (palette images whose palette is gray
    included), H x W x 3 RGB otherwise; alpha is dropped, 16-bit is scaled to 8-bit.

    Raises :class:`ImageTooLarge` for images over PIL's decompression-bomb limit (checked from the
    header, before any pixel is decoded) and :class:`UnreadableImage` for anything else undecodable,
    with a detail a person can read (never an object's repr)."""
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
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large: {error}") from error
    except UnidentifiedImageError as error:  # PIL's text names the BytesIO object's address
        detail = "empty file (0 bytes)" if not data else f"not an image in a known format ({len(data)} bytes)"
        raise UnreadableImage(detail) from error
    except (OSError, ValueError, SyntaxError) as error:
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


def iter_image_files(root: Path, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[ImageFile | Skip]:
    """Every image file under a folder, or inside a .tar/.tar.gz/.zip archive, in sorted order
    (folders) or archive order (archives), and a :class:`Skip` for each one that cannot be taken
    (over ``max_member_bytes``, a link leaving the input, a link loop, a truncated archive).
    Raises :class:`SourceError` when there is nothing at all."""
    found = False
    if is_archive(root):
        items = _iter_archive(root, max_member_bytes)
    elif root.is_dir():
        items = _iter_folder(root, max_member_bytes)
    else:
        raise SourceError(f"{root} is neither a folder nor a .tar/.tar.gz/.zip archive of images")
    for item in items:
        found = True
        yield item
    if not found:
        raise SourceError(f"{root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _too_large(location: str, size: int, limit: int) -> Skip:
    return Skip(location, "file too large", f"{size} bytes, over the limit of {limit} (max_member_bytes); not read")


def _iter_folder(root: Path, limit: int) -> Iterator[ImageFile | Skip]:
    """Walk ``root`` in sorted order, following symbolic links that stay inside it.

    A link whose target lies outside ``root`` is skipped (the input is what the user named), as
    is a broken link and a folder link that leads back to one of its own ancestors (a loop)."""
    real_root = root.resolve()

    def walk(folder: Path, folder_real: Path, ancestors: frozenset[Path]) -> Iterator[ImageFile | Skip]:
        try:
            children = sorted(folder.iterdir())
        except OSError as error:  # a folder without read permission
            yield Skip(folder.relative_to(root).as_posix(), "unreadable folder", error.strerror or str(error))
            return
        for child in children:
            location = child.relative_to(root).as_posix()
            is_link = child.is_symlink()
            target = child.resolve() if is_link else folder_real / child.name  # no syscall per plain file
            if is_link:
                if not target.is_relative_to(real_root):
                    yield Skip(location, "link outside input", f"links to {target}, outside {real_root}")
                    continue
                if not target.exists():
                    yield Skip(location, "broken link", f"links to {target}, which does not exist")
                    continue
            if child.is_dir():
                if target in ancestors:
                    yield Skip(location, "link loop", f"links back to {target}, a folder it is inside")
                else:
                    yield from walk(child, target, ancestors | {target})
            elif child.suffix.lower() in IMAGE_SUFFIXES and child.is_file():
                size = child.stat().st_size
                yield _too_large(location, size, limit) if size > limit else ImageFile(location, child.read_bytes)

    yield from walk(root, real_root, frozenset({real_root}))


def _unsafe_member_name(name: str) -> bool:
    """Whether an archive member's name is absolute or climbs out with ``..`` (never trusted)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(re.match(r"^[A-Za-z]:", name))


def _member_skip(name: str, size: int, limit: int, link: str | None) -> Skip | None:
    """Why an archive member is not read, or None to read it. Members are never written to disk
    (only their bytes are decoded), so these rules keep ids clean and memory bounded."""
    if link is not None:
        return Skip(name, "link member", f"links to {link!r}; archive links are not followed")
    if _unsafe_member_name(name):
        return Skip(name, "unsafe member name", "absolute or '..' member path")
    if size > limit:
        return _too_large(name, size, limit)
    return None


def _iter_archive(path: Path, limit: int) -> Iterator[ImageFile | Skip]:
    """Members of a .zip or (streamed) .tar/.tar.gz, each read whole only when within ``limit``.

    A truncated or corrupt archive keeps what was read before the damage and ends with one
    ``truncated archive`` skip; if nothing at all could be read it raises :class:`SourceError`."""
    read = 0
    try:
        for item in (_iter_zip if path.name.lower().endswith(".zip") else _iter_tar)(path, limit):
            read += 1
            yield item
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as error:
        detail = f"{type(error).__name__}: {error}"
        if read == 0:
            raise SourceError(f"{path} cannot be read as an archive ({detail})",
                              "download it again, or unpack it and give the folder") from error
        yield Skip(path.name, "truncated archive", f"{detail}; the {read} members before it were kept")


def _read_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A zip symlink member's target (its data), read no further than a path's length."""
    with archive.open(info) as handle:
        return handle.read(4096).decode("utf-8", "replace")


def _iter_zip(path: Path, limit: int) -> Iterator[ImageFile | Skip]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:  # a partial download has lost its central directory (at the end)
        yield from _iter_zip_local_headers(path, limit)
        raise zipfile.BadZipFile(f"the end of the archive is missing ({error})") from error
    with archive:
        for info in archive.infolist():
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if info.is_dir() or (not is_link and Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES):
                continue
            link = _read_link(archive, info) if is_link else None
            skip = _member_skip(info.filename, info.file_size, limit, link)
            if skip is not None:
                yield skip
                continue
            try:
                with archive.open(info) as handle:
                    data = handle.read(limit + 1)  # the header's size may lie (zip bombs)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                yield Skip(info.filename, "corrupt archive member", f"{type(error).__name__}: {error}")
                continue
            yield _too_large(info.filename, len(data), limit) if len(data) > limit else \
                ImageFile(info.filename, lambda data=data: data)


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def _iter_zip_local_headers(path: Path, limit: int) -> Iterator[ImageFile | Skip]:
    """The members of a zip without its central directory, read in file order from their local
    headers until the data ends (stored and deflated members; ends at a member whose sizes are
    only in a trailing data descriptor, since its end cannot be found without the directory)."""
    with open(path, "rb") as handle:
        while len(header := handle.read(_LOCAL_HEADER.size)) == _LOCAL_HEADER.size:
            signature, _, flags, method, _, _, _, packed, size, name_length, extra_length = _LOCAL_HEADER.unpack(header)
            if signature != b"PK\x03\x04" or flags & 0x08:
                return
            name = handle.read(name_length).decode("utf-8" if flags & 0x800 else "cp437")
            handle.seek(extra_length, io.SEEK_CUR)
            if name.endswith("/") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                handle.seek(packed, io.SEEK_CUR)
                continue
            skip = _member_skip(name, size, limit, None)
            if skip is None and method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                skip = Skip(name, "corrupt archive member", f"compression method {method} in a zip without its directory")
            if skip is not None:
                yield skip
                handle.seek(packed, io.SEEK_CUR)
                continue
            raw = handle.read(packed)
            if len(raw) < packed:
                raise EOFError(f"the archive ends inside {name}")
            data = raw if method == zipfile.ZIP_STORED else zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, limit + 1)
            yield _too_large(name, len(data), limit) if len(data) > limit else ImageFile(name, lambda data=data: data)


def _iter_tar(path: Path, limit: int) -> Iterator[ImageFile | Skip]:
    with tarfile.open(path, mode="r|*") as archive:  # streamed: one pass, no random access
        for member in archive:
            is_link = member.issym() or member.islnk()
            if not is_link and not (member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES):
                continue
            skip = _member_skip(member.name, member.size, limit, member.linkname if is_link else None)
            if skip is not None:
                yield skip  # the stream skips the member's data in blocks, never holding it
                continue
            handle = archive.extractfile(member)
            data = handle.read() if handle is not None else b""
            yield ImageFile(member.name, lambda data=data: data)


def image_loader(image_file: ImageFile) -> Callable[[], np.ndarray]:
    """A deferred decoder for one image file."""
    return lambda: decode_image(image_file.read())
