"""Bad input on the input side (issue 8): one table of cases, each with what fercurate does.

Every case builds a small damaged input in ``tmp_path``, ingests it into a fresh workspace and
checks the outcome: the rows kept and the reasons of the counted skips, or the one clear
:class:`~fercurate.errors.SourceError` when nothing is readable. Never a traceback, never a silent
drop. The table below is the README's reliability section for sources.

| case | what fercurate does |
|---|---|
| CSV row with 2303 pixels | row skipped: `wrong pixel count` (file:line); the other rows ingested |
| CSV row with letters in the pixels | row skipped: `non-numeric pixels` |
| CSV row with emotion 9 | row skipped: `unknown emotion code` |
| CSV row with too few fields | row skipped: `malformed row` |
| CSV with CR-only line ends (old Mac) | read as lines: every row ingested |
| CSV with a UTF-8 byte-order mark | BOM ignored: every row ingested |
| CSV without a header line | `SourceError` quoting at most 120 characters of the first line |
| 0-byte image | skipped: `unreadable image`, detail "empty file (0 bytes)" |
| truncated PNG | skipped: `unreadable image`; the other images ingested |
| text file named .png | skipped: `unreadable image`, detail "not an image in a known format" |
| PNG declaring 20000x20000 pixels (decompression bomb) | skipped before decoding: `image too large`; the others ingested |
| class folder that is a symlink inside the input | followed: its images ingested under the link's name |
| symlink to a folder outside the input | skipped: `link outside input` |
| symlink looping back to an ancestor folder | skipped: `link loop` (no endless walk) |
| tar member named `../x/happy/a.png` | skipped: `unsafe member name` (nothing is ever written from an archive) |
| tar member with an absolute name | skipped: `unsafe member name` |
| tar symlink / hard-link member | skipped: `link member` (links are not followed) |
| zip symlink member | skipped: `link member` |
| tar or zip member over `max_member_bytes` (64 MiB default) | skipped unread: `file too large` |
| truncated .tar.gz (partial download) | members before the damage ingested, then one `truncated archive` skip |
| .tar.gz cut inside its first member | `SourceError`: cannot be read as an archive, download it again |
| truncated .zip (central directory lost) | members before the damage read from their local headers, then one `truncated archive` skip |
| .zip cut inside its first member | `SourceError`: cannot be read as an archive, download it again |
| CK+ Landmarks file with a word in it | skipped: `malformed landmarks file`; the face ingested without landmarks |
| CK+ FACS file with one column | skipped: `malformed FACS file`; the faces ingested without action units |
| CK+ Emotion file with a word in it | skipped: `unreadable label file`; that sequence not ingested |
| JAFFE ratings row with a non-number or bad pose | skipped: `malformed ratings row` (file:line); faces ingested, that pose without votes |
| JAFFE file name not SUBJECT.EXPRn.N / unknown expression | skipped: `unrecognised file name` / `unknown expression code` |
| kill -9 during an archive ingest | the workspace keeps its last committed rows; a rerun ingests everything |
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import face_pixels, pixel_string
from PIL import Image

from fercurate.sources import SourceError, open_source
from fercurate.sources.base import Source
from fercurate.workspace import Workspace

HEADER = "emotion,pixels,Usage"
GOOD_ROW = f"3,{pixel_string(face_pixels(1))},Training"


def png(seed: int, side: int = 16) -> bytes:
    """A distinct small gray PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A tiny PNG whose header declares 20000 x 20000 pixels (PIL's decompression-bomb guard)."""
    data = bytearray(png(0, side=1))
    data[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@dataclass(frozen=True)
class Expect:
    """The outcome of a case: ``rows`` ingested and one skip per entry of ``skips`` (each a text
    found in that skip's ``reason: detail``), or a SourceError whose message holds ``error``."""

    rows: int = 0
    skips: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Case:
    """One damaged input: ``build`` writes it under a folder and returns the reader's opener."""

    name: str
    build: Callable[[Path], Callable[[], Source]]
    expect: Expect


# inputs


def csv_case(*lines: str | bytes, newline: bytes = b"\n", prefix: bytes = b"") -> Callable[[Path], Callable[[], Source]]:
    def build(folder: Path) -> Callable[[], Source]:
        path = folder / "fer2013.csv"
        path.write_bytes(prefix + b"".join((line if isinstance(line, bytes) else line.encode()) + newline
                                           for line in lines))
        return lambda: open_source("fer2013", path)
    return build


def tree(files: dict[str, bytes], links: dict[str, str] | None = None, **options: object
         ) -> Callable[[Path], Callable[[], Source]]:
    """An image folder ``faces/`` with ``files`` and symbolic ``links`` (name -> target, relative
    to the folder holding ``faces/``)."""
    def build(folder: Path) -> Callable[[], Source]:
        root = folder / "faces"
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        for name, target in (links or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(folder / target, target_is_directory=(folder / target).is_dir())
        return lambda: open_source("imagefolder", root, **options)
    return build


def tar_members(*members: tuple[str, bytes | tuple[str, str]], cut: float | None = None, **options: object
                ) -> Callable[[Path], Callable[[], Source]]:
    """A .tar.gz of (name, bytes) files and (name, ("sym" | "hard", target)) links, optionally cut
    to a fraction of its size (a partial download)."""
    def build(folder: Path) -> Callable[[], Source]:
        path = folder / "faces.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            for name, content in members:
                info = tarfile.TarInfo(name)
                if isinstance(content, tuple):
                    info.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                    info.linkname = content[1]
                    archive.addfile(info)
                else:
                    info.size = len(content)
                    archive.addfile(info, io.BytesIO(content))
        if cut is not None:
            path.write_bytes(path.read_bytes()[:int(path.stat().st_size * cut)])
        return lambda: open_source("imagefolder", path, **options)
    return build


def zip_members(*members: tuple[str, bytes], symlink: tuple[str, str] | None = None, cut: float | None = None,
                compression: int = zipfile.ZIP_STORED, **options: object) -> Callable[[Path], Callable[[], Source]]:
    """A .zip of (name, bytes) files and one optional symbolic link, optionally cut short."""
    def build(folder: Path) -> Callable[[], Source]:
        path = folder / "faces.zip"
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, content in members:
                archive.writestr(name, content)
            if symlink is not None:
                info = zipfile.ZipInfo(symlink[0])
                info.external_attr = (0o120777 << 16)
                archive.writestr(info, symlink[1])
        if cut is not None:
            path.write_bytes(path.read_bytes()[:int(path.stat().st_size * cut)])
        return lambda: open_source("imagefolder", path, **options)
    return build


def ckplus(file: str, text: str) -> Callable[[Path], Callable[[], Source]]:
    """A one-sequence CK+ (S005/001, two frames, landmarks, FACS, emotion 1) with ``file`` (relative
    to the root) overwritten by ``text``."""
    def build(folder: Path) -> Callable[[], Source]:
        root = folder / "CK+"
        labels = {"Emotion/S005/001/S005_001_00000002_emotion.txt": "   1.0\n",
                  "FACS/S005/001/S005_001_00000002_facs.txt": "   1.0   2.0\n   4.0   0.0\n",
                  **{f"Landmarks/S005/001/S005_001_{n:08d}_landmarks.txt": "   1.0   2.0\n" * 68 for n in (1, 2)},
                  **{f"cohn-kanade-images/S005/001/S005_001_{n:08d}.png": png(n) for n in (1, 2)},
                  file: text}
        for name, content in labels.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return lambda: open_source("ckplus", root, frames="all")
    return build


def jaffe(ratings: str, names: tuple[str, ...] = ("KA.AN1.39.tiff", "KA.HA1.29.tiff")
          ) -> Callable[[Path], Callable[[], Source]]:
    def build(folder: Path) -> Callable[[], Source]:
        root = folder / "jaffe"
        root.mkdir()
        for seed, name in enumerate(names):
            (root / name).write_bytes(png(seed))
        (folder / "ratings.txt").write_text(ratings)
        return lambda: open_source("jaffe", root, ratings=folder / "ratings.txt")
    return build


RATINGS_HEADER = "# HAP SAD SUR ANG DIS FEA PIC\n"
BIG = png(7, side=256)  # about 65 kB of noise: over a 10 kB member limit

CASES = [
    Case("csv wrong pixel count", csv_case(HEADER, GOOD_ROW, f"3,{' '.join(['1'] * 2303)},Training"),
         Expect(1, ["wrong pixel count"])),
    Case("csv non-numeric pixels", csv_case(HEADER, GOOD_ROW, f"3,{'a ' * 2304},Training"),
         Expect(1, ["non-numeric pixels"])),
    Case("csv unknown emotion", csv_case(HEADER, GOOD_ROW, GOOD_ROW.replace("3,", "9,", 1)),
         Expect(1, ["unknown emotion code"])),
    Case("csv too few fields", csv_case(HEADER, GOOD_ROW, "3"), Expect(1, ["malformed row"])),
    Case("csv CR-only line ends", csv_case(HEADER, GOOD_ROW, GOOD_ROW, GOOD_ROW, newline=b"\r"), Expect(3)),
    Case("csv UTF-8 BOM", csv_case(HEADER, GOOD_ROW, GOOD_ROW, prefix=b"\xef\xbb\xbf"), Expect(2)),
    Case("csv no header", csv_case(GOOD_ROW, GOOD_ROW), Expect(error="characters)")),
    Case("image 0 bytes", tree({"happy/a.png": png(1), "happy/b.png": b""}),
         Expect(1, ["unreadable image: empty file (0 bytes)"])),
    Case("image truncated PNG", tree({"happy/a.png": png(1), "happy/b.png": png(2)[:60]}),
         Expect(1, ["unreadable image"])),
    Case("image not an image", tree({"happy/a.png": png(1), "happy/b.png": b"hello " * 20}),
         Expect(1, ["not an image in a known format"])),
    Case("image decompression bomb", tree({"happy/a.png": png(1), "happy/b.png": bomb_png()}),
         Expect(1, ["image too large"])),
    Case("folder symlinked class folder inside", tree({"raw/happy/a.png": png(1)}, {"sad": "faces/raw/happy"}),
         Expect(2)),  # raw/happy/a.png and, through the link, sad/a.png
    Case("folder symlink outside the input", tree({"happy/a.png": png(1)}, {"sad": "elsewhere"}),
         Expect(1, ["link outside input"])),
    Case("folder symlink loop", tree({"happy/a.png": png(1)}, {"happy/again": "faces"}),
         Expect(1, ["link loop"])),
    Case("tar ../ member", tar_members(("happy/a.png", png(1)), ("../x/happy/b.png", png(2))),
         Expect(1, ["unsafe member name"])),
    Case("tar absolute member", tar_members(("happy/a.png", png(1)), ("/tmp/happy/b.png", png(2))),
         Expect(1, ["unsafe member name"])),
    Case("tar symlink and hard-link members",
         tar_members(("happy/a.png", png(1)), ("sad/b.png", ("sym", "../happy/a.png")),
                     ("sad/c.png", ("hard", "happy/a.png")), ("angry", ("sym", "/etc"))),
         Expect(1, ["link member", "link member", "link member"])),
    Case("tar oversized member", tar_members(("happy/a.png", png(1)), ("happy/b.png", BIG), max_member_bytes=10_000),
         Expect(1, ["file too large"])),
    Case("tar truncated", tar_members(*((f"happy/{n}.png", png(n, side=64)) for n in range(4)), cut=0.7),
         Expect(2, ["truncated archive"])),
    Case("tar truncated in its first member", tar_members(("happy/a.png", png(1, side=64)), cut=0.3),
         Expect(error="cannot be read as an archive")),
    Case("zip symlink member", zip_members(("happy/a.png", png(1)), symlink=("sad/b.png", "../happy/a.png")),
         Expect(1, ["link member"])),
    Case("zip oversized member", zip_members(("happy/a.png", png(1)), ("happy/b.png", BIG), max_member_bytes=10_000),
         Expect(1, ["file too large"])),
    Case("zip truncated", zip_members(*((f"happy/{n}.png", png(n, side=64)) for n in range(4)), cut=0.7),
         Expect(2, ["truncated archive"])),
    Case("zip (deflated) truncated", zip_members(*((f"happy/{n}.png", png(n, side=64)) for n in range(4)), cut=0.7,
                                                compression=zipfile.ZIP_DEFLATED),
         Expect(2, ["truncated archive"])),
    Case("zip truncated in its first member", zip_members(("happy/a.png", png(1, side=64)), cut=0.5),
         Expect(error="cannot be read as an archive")),
    Case("ckplus malformed landmarks", ckplus("Landmarks/S005/001/S005_001_00000002_landmarks.txt", "1.0 x\n"),
         Expect(2, ["malformed landmarks file"])),
    Case("ckplus malformed FACS", ckplus("FACS/S005/001/S005_001_00000002_facs.txt", "1.0\n4.0\n"),
         Expect(2, ["malformed FACS file"])),
    Case("ckplus malformed emotion", ckplus("Emotion/S005/001/S005_001_00000002_emotion.txt", "angry\n"),
         Expect(0, ["unreadable label file"])),
    Case("jaffe malformed ratings",
         jaffe(RATINGS_HEADER + "1 2.9 1.0 1.1 4.8 3.1 1.9 KA-AN1\n2 x 1 1 1 1 1 KA-HA1\n3 1 1 1 1 1 1 ???\n"),
         Expect(2, ["malformed ratings row", "malformed ratings row"])),
    Case("jaffe malformed names", jaffe(RATINGS_HEADER + "1 2.9 1.0 1.1 4.8 3.1 1.9 KA-AN1\n",
                                        ("KA.AN1.39.tiff", "KA.XX1.2.tiff", "ka-an1.tiff")),
         Expect(1, ["unknown expression code", "unrecognised file name"])),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(tmp_path: Path, case: Case) -> None:
    """Each damaged input gives its rows and counted skips, or one clear SourceError."""
    opener = case.build(tmp_path)
    workspace = Workspace(tmp_path / "ws")
    if case.expect.error is not None:
        with pytest.raises(SourceError, match=re.escape(case.expect.error)) as raised:
            workspace.ingest(opener(), workers=2)
        assert len(str(raised.value)) < 600
        return
    report = workspace.ingest(opener(), workers=2)
    skips = workspace.skips().to_pylist() if report.skips else []
    assert workspace.manifest().num_rows == case.expect.rows
    found = sorted(f"{skip['reason']}: {skip['detail']}" for skip in skips)
    assert len(found) == len(case.expect.skips), found
    for expected in case.expect.skips:
        assert any(expected in text for text in found), (expected, found)


def test_oversized_member_is_not_read(tmp_path: Path) -> None:
    """A 256 MB member (a sparse file: no disk used) is skipped by its header size, never held in
    memory: the tar stream passes over its data in blocks."""
    path = tmp_path / "bomb.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("happy/a.png")
        data = png(1)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    huge = tarfile.TarInfo("happy/huge.png")
    huge.size = 1 << 28
    end = 512 + -(-len(data) // 512) * 512  # the first member's header and padded data
    with open(path, "r+b") as handle:  # a header claiming 256 MB after it, then a sparse gap
        handle.seek(end)
        handle.write(huge.tobuf())
        handle.truncate(end + 512 + (1 << 28) + 1024)  # sparse: no disk or memory used
    items = list(open_source("imagefolder", path))
    assert [type(item).__name__ for item in items] == ["Face", "Skip"]
    assert items[1].reason == "file too large"


def test_sigkill_during_archive_ingest_loses_nothing(tmp_path: Path) -> None:
    """kill -9 in the middle of an archive ingest (the way tests/test_workspace.py kills a CSV ingest):
    the workspace keeps its committed rows and a rerun takes the whole archive."""
    opener = tar_members(*((f"happy/{n}.png", png(n)) for n in range(300)))(tmp_path)
    space = Workspace(tmp_path / "ws")
    space.ingest(opener(), workers=2)
    committed = space.manifest().num_rows
    (tmp_path / "b").mkdir()
    other = tar_members(*((f"sad/{n}.png", png(1000 + n)) for n in range(300)))(tmp_path / "b")
    archive = tmp_path / "b" / "faces.tar.gz"
    script = textwrap.dedent(f"""
        import os, signal
        from fercurate.sources import open_source
        from fercurate.workspace import Workspace
        source = open_source("imagefolder", {str(archive)!r})
        read = type(source).__iter__
        def dying():
            for n, item in enumerate(read(source)):
                if n == 200:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        source.__class__ = type("Dying", (type(source),), {{"__iter__": lambda self: dying()}})
        Workspace({str(space.root)!r}).ingest(source)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert space.manifest().num_rows == committed == 300
    report = space.ingest(other(), workers=2)
    assert report.rows_added == 300 and space.manifest().num_rows == 600
