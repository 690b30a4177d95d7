"""fercurate under bad input and faults: every case a user can hit, each with what fercurate does.

Two tables of cases, both in the README's reliability section. The first is bad input on the
input side (below); the second, :data:`COMMAND_CASES`, is commands run wrongly and damaged,
missing or read-only workspaces: each gives ``error: <what to do>`` and exit status 2, never a
traceback, and anything else is reported as an internal error with a log file.

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
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import face_pixels, pixel_string, write_fer2013_csv
from fercurate_cli.main import app
from PIL import Image
from typer.testing import CliRunner

from fercurate.audit.run import summary_json
from fercurate.errors import ExportError, OptionError
from fercurate.export import ExportOptions, export_dataset
from fercurate.options import BALANCE_LABELS, parse_balance, parse_device
from fercurate.schema import CANONICAL_LABELS
from fercurate.sources import SourceError, open_source
from fercurate.sources.base import Source
from fercurate.sources.demo import open_demo
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


def ingest_killed_after(space: Workspace, source: str, path: Path, *, items: int) -> subprocess.CompletedProcess[bytes]:
    """Ingest ``path`` into ``space`` in another process that kills itself with SIGKILL after reading
    ``items`` items: a crash in the middle of an ingest."""
    script = textwrap.dedent(f"""
        import os, signal
        from fercurate.sources import open_source
        from fercurate.workspace import Workspace
        source = open_source({source!r}, {str(path)!r})
        read = type(source).__iter__
        def dying():
            for n, item in enumerate(read(source)):
                if n == {items}:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        source.__class__ = type("Dying", (type(source),), {{"__iter__": lambda self: dying()}})
        Workspace({str(space.root)!r}).ingest(source)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True)


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
    result = ingest_killed_after(space, "imagefolder", tmp_path / "b" / "faces.tar.gz", items=200)
    assert result.returncode == -signal.SIGKILL
    assert space.manifest().num_rows == committed == 300
    report = space.ingest(other(), workers=2)
    assert report.rows_added == 300 and space.manifest().num_rows == 600


# ------------------------------------------------------------------------------------------
# Commands run wrongly and workspaces in a bad state: one error path through the CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A small demo workspace (8 faces per class) that the cases below copy or read, never change."""
    root = tmp_path_factory.mktemp("errors")
    space = Workspace(root / "ws")
    space.ingest(open_demo(root / "demo", per_class=8))
    return space


def copy_of(demo: Workspace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo.root, tmp_path / "copy"))


def truncated_manifest(demo: Workspace, tmp_path: Path) -> Path:
    root = copy_of(demo, tmp_path)
    data = (root / "manifest.parquet").read_bytes()
    (root / "manifest.parquet").write_bytes(data[: len(data) // 2])
    return root


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not a workspace")
    return tmp_path / "notes.txt"


def garbage_parquet(tmp_path: Path) -> Path:
    (tmp_path / "garbage.parquet").write_text("not parquet at all")
    return tmp_path / "garbage.parquet"


def bad_recipe(tmp_path: Path) -> Path:
    (tmp_path / "r.yaml").write_text("workspace: ws\nsteps:\n  - audit: {noise_model: forest}\n")
    return tmp_path / "r.yaml"


@dataclass
class CommandCase:
    """A command a user may run wrongly: its arguments (built from the demo workspace and a fresh
    folder), the message fercurate must answer with, and what it does, for the README's table."""

    name: str
    arguments: Callable[[Workspace, Path], list[str]]
    message: str
    does: str


HAS_GPU = torch.cuda.is_available()
COMMAND_CASES = [
    CommandCase("--workspace is a file", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(a_file(tmp))],
         "is a file, not a folder", "refuses: give --workspace a folder"),
    CommandCase("audit of a missing workspace", lambda ws, tmp: ["audit", "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    CommandCase("export of a missing workspace", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    CommandCase("train on a missing workspace", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    CommandCase("truncated manifest.parquet (audit)", lambda ws, tmp: ["audit", "-w", str(truncated_manifest(ws, tmp))],
         "manifest.parquet is damaged or truncated", "names the file; restore it or re-ingest"),
    CommandCase("truncated manifest.parquet (export)",
         lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(truncated_manifest(ws, tmp))],
         "manifest.parquet is damaged or truncated", "names the file; restore it or re-ingest"),
    CommandCase("train --device cuda without a GPU", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                                "--device", "cuda"],
         "asks for a CUDA GPU", "refuses before loading data: use --device cpu or auto"),
    CommandCase("train --device gpu without a GPU", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                               "--device", "gpu"],
         "asks for a CUDA GPU", "gpu means cuda; refused as above"),
    CommandCase("train --device tpu", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root), "--device", "tpu"],
         "unknown device 'tpu'", "lists auto, cpu and cuda"),
    CommandCase("train --optimizer adam", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                     "--optimizer", "adam"],
         "optimizer: Input should be 'adamw' or 'sgd'", "names the option and its values"),
    CommandCase("train --balance with an unknown class", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                                    "--balance", "angry=1"],
         "'angry', not an emotion", "lists the emotions"),
    CommandCase("train --balance anger=1 (one class left)",
         lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root), "--balance", "anger=1", "--model", "tiny"],
         "a classifier needs at least 2 classes", "says how to keep two classes"),
    CommandCase("train into a file", lambda ws, tmp: ["train", str(a_file(tmp)), "-w", str(ws.root)],
         "is a file", "asks for a folder"),
    CommandCase("audit --noise-model forest", lambda ws, tmp: ["audit", "-w", str(ws.root), "--noise-model", "forest"],
         "noise_model: Input should be 'auto', 'cnn', 'hog-mlp' or 'hog-logreg'", "names the option and its values"),
    CommandCase("audit --folds 1", lambda ws, tmp: ["audit", "-w", str(ws.root), "--folds", "1"],
         "folds: Input should be greater than or equal to 2", "names the option and its bound"),
    CommandCase("audit --estimator without =", lambda ws, tmp: ["audit", "-w", str(ws.root), "--estimator", "gender"],
         "expected COLUMN=VALUE (e.g. gender=model.onnx", "shows the expected form"),
    CommandCase("audit --demographics missing.csv",
         lambda ws, tmp: ["audit", "-w", str(ws.root), "--demographics", str(tmp / "missing.csv")],
         "demographics sidecar", "refuses before auditing"),
    CommandCase("export --folds 8:1", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(ws.root), "--folds", "8:1"],
         "split.folds", "names the option"),
    CommandCase("export --balance anger=x", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(ws.root),
                                                       "--balance", "anger=x"],
         "'anger=x' is not label=number", "shows the expected form"),
    CommandCase("ingest hub garbage.parquet", lambda ws, tmp: ["ingest", "hub", str(garbage_parquet(tmp)),
                                                         "-w", str(tmp / "ws")],
         "cannot be read as parquet", "refuses; no workspace is left behind"),
    CommandCase("run a recipe with a bad option", lambda ws, tmp: ["run", str(bad_recipe(tmp))],
         "step 1 (audit) of r.yaml: invalid audit: noise_model", "names the step and the option"),
]


@pytest.mark.parametrize("case", COMMAND_CASES, ids=[case.name for case in COMMAND_CASES])
def test_user_errors_are_one_line_messages(case: CommandCase, demo: Workspace, tmp_path: Path) -> None:
    if "without a GPU" in case.name and HAS_GPU:
        pytest.skip("this machine has a GPU")
    before = demo.manifest_path.read_bytes()
    result = runner.invoke(app, case.arguments(demo, tmp_path))
    assert result.exit_code == 2, result.output
    assert "error: " in result.output and case.message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "ws").exists()  # nothing created
    assert demo.manifest_path.read_bytes() == before


EXTRA_ROWS = [
    ("`ingest hub owner/name` offline, or with HF_HUB_OFFLINE=1", "2", "cannot reach the Hugging Face Hub / "
     "HF_HUB_OFFLINE is set", "fails at once (no 25 s of retries): needs network access or a local path"),
    ("read-only workspace", "0 / 2", "the workspace ... is read-only",
     "readers (export, shared lock) work; ingest and audit refuse"),
    ("image missing from the workspace", "0 / 2", "image(s) of the exported rows are missing",
     "audit counts it under `missing_image` only; export refuses"),
    ("a failed first ingest", "2", "(the source's error)", "removes the workspace folder it created"),
    ("any other exception (a bug)", "1", "internal error ... traceback in <log>",
     "one line; the traceback goes to a log file in the temp folder"),
]


def reliability_table() -> str:
    """The README's reliability table (markdown): one row per case above, then the cases that
    other tests here check."""
    rows = [(case.name, "2", case.message, case.does) for case in COMMAND_CASES] + EXTRA_ROWS
    lines = ["| case | exit | message (excerpt) | what fercurate does |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {case} | {code} | {message.replace('|', '/')} | {does} |"
                              for case, code, message, does in rows]) + "\n"


def test_reliability_table_has_a_row_per_case() -> None:
    assert len(reliability_table().splitlines()) == 2 + len(COMMAND_CASES) + len(EXTRA_ROWS)


def test_hub_name_fails_fast_offline(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fercurate_cli", "ingest", "hub", "owner/name", "-w",
                             str(tmp_path / "ws")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr and "local path" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "ws").exists()


def test_hub_name_unreachable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    result = runner.invoke(app, ["ingest", "hub", "owner/name", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "cannot reach the Hugging Face Hub" in result.output, result.output
    assert "needs network access" in result.output


def test_other_exceptions_are_internal_errors_with_a_log(demo: Workspace, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fercurate.audit.run

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(fercurate.audit.run, "audit_workspace", broken)
    result = runner.invoke(app, ["audit", "-w", str(demo.root)])
    assert result.exit_code == 1 and "internal error" in result.output and "KeyError: 'a bug'" in result.output
    assert "Traceback" not in result.output
    log = Path(result.output.rsplit("traceback in ", 1)[1].split()[0])
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
    log.unlink()


def test_error_lines_are_not_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 6) / "workspace"
    result = runner.invoke(app, ["audit", "-w", str(deep)])
    assert result.exit_code == 2
    assert f"there is no workspace at {deep}: run" in result.output.replace("\n", " ")
    assert f"there is no workspace at {deep}: run" in result.output  # one line, however long


def test_missing_image_is_counted_once_and_summary_is_json(demo: Workspace, tmp_path: Path) -> None:
    root = copy_of(demo, tmp_path)
    space = Workspace(root)
    lost = space.manifest()["filepath"][0].as_py()
    (root / lost).unlink()
    assert space.missing_images(space.manifest()["filepath"].to_pylist()) == [lost]
    result = runner.invoke(app, ["audit", "-w", str(root), "--no-label-noise", "--no-faces", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "audit" / "summary.json").read_text(), parse_constant=pytest.fail)
    quality = summary["quality"]
    assert quality["missing_image"] == 1 and quality["unreadable"] == 0
    assert quality["is_blank"] == quality["is_blurry"] == quality["too_dark"] == 0
    exported = runner.invoke(app, ["export", str(tmp_path / "out"), "-w", str(root)])
    assert exported.exit_code == 2 and "missing" in exported.output and "Traceback" not in exported.output


def test_summary_json_has_null_where_a_figure_is_nan() -> None:
    text = summary_json({"accuracy": float("nan"), "rates": [np.float32("nan"), np.float64(0.5)],
                         "where": Path("x"), "count": np.int64(3)})
    assert json.loads(text, parse_constant=pytest.fail) == {"accuracy": None, "rates": [None, 0.5], "where": "x",
                                                             "count": 3}


def test_train_balance_takes_what_export_takes(demo: Workspace, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path / "run"), "-w", str(demo.root), "--model", "tiny",
                                 "--epochs", "1", "--device", "cpu", "--balance", "anger=1,disgust=1",
                                 "--no-onnx", "--split-strategy", "grouped", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["class_names"] == ["anger", "disgust"]


@pytest.mark.parametrize(("text", "parsed"), [
    ("uniform", "uniform"), ("cap:10", "cap:10"), ("uniform:0", "uniform:0"),
    ("anger=1, disgust=2", {"anger": 1.0, "disgust": 2.0}), ({"fear": 1}, {"fear": 1.0}),
])
def test_balance_targets_parse_in_one_place(text: str | dict[str, float], parsed: object) -> None:
    assert parse_balance(text) == parsed


@pytest.mark.parametrize("text", ["even", "anger=nan", "anger=-1", "anger=0", "happy=1", "cap:x"])
def test_bad_balance_targets_are_option_errors(text: str) -> None:
    with pytest.raises(OptionError):
        parse_balance(text)


def test_devices_and_labels() -> None:
    assert [parse_device(name) for name in ("auto", "CPU", "gpu", "gpu:1", "cuda:0")] == [
        "auto", "cpu", "cuda", "cuda:1", "cuda:0"]
    with pytest.raises(OptionError):
        parse_device("cpu:1")
    assert BALANCE_LABELS == CANONICAL_LABELS


@pytest.fixture
def read_only_workspace(demo: Workspace) -> Iterator[Path]:
    """A copy of the demo workspace that the user ``nobody`` may read but not write (as root, a
    chmod alone would not stop writes); skipped where that user cannot be taken."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    base = Path(tempfile.mkdtemp(prefix="fercurate-read-only-"))
    try:
        shutil.copytree(demo.root, base / "ws")
        (base / "ws" / ".lock").unlink(missing_ok=True)
        for path in (base, *base.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield base / "ws"
    finally:
        shutil.rmtree(base)


def as_nobody(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                           *arguments], capture_output=True, text=True, timeout=120, cwd="/tmp")


def test_read_only_workspace_readers_work_and_writers_are_told(read_only_workspace: Path) -> None:
    reader = as_nobody("-c", "import sys; from fercurate.workspace import Workspace; space = Workspace(sys.argv[1])\n"
                             "with space.lock(shared=True): print(space.manifest().num_rows)", str(read_only_workspace))
    assert reader.returncode == 0 and reader.stdout.strip() == "56", reader.stderr
    writer = as_nobody("-m", "fercurate_cli", "audit", "-w", str(read_only_workspace))
    assert writer.returncode == 2 and "is read-only" in writer.stderr and "Traceback" not in writer.stderr
    out = Path(tempfile.mkdtemp(prefix="fercurate-export-"))
    out.chmod(0o777)
    try:  # export only reads the workspace: it works on a read-only one (it used to fail on .lock)
        export = as_nobody("-m", "fercurate_cli", "export", str(out / "x"), "-w", str(read_only_workspace),
                           "--format", "manifest,fer2013-csv", "--json")
        assert export.returncode == 0, export.stderr
        assert (out / "x" / "manifest.parquet").is_file()
    finally:
        shutil.rmtree(out)


# ------------------------------------------------------------------------------------------
# Writers and faults: killed and concurrent writers, and exports that must not destroy data


@pytest.fixture
def workspace(demo: Workspace, tmp_path: Path) -> Workspace:
    """A writable copy of the demo workspace inside ``tmp_path`` (56 faces)."""
    return Workspace(copy_of(demo, tmp_path))


def csv_of(path: Path, seeds: range, usage: str = "Training") -> Path:
    return write_fer2013_csv(path, [(str(seed % 7), pixel_string(face_pixels(seed)), usage) for seed in seeds])


def test_sigkill_mid_ingest_leaves_workspace_readable(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
    bigger = csv_of(tmp_path / "b.csv", range(600), usage="PrivateTest")
    result = ingest_killed_after(space, "fer2013", bigger, items=400)
    assert result.returncode == -9
    assert space.manifest().num_rows == 3
    report = space.ingest(open_source("fer2013", bigger))
    assert space.manifest().num_rows == 603 and report.rows_added == 600


def test_concurrent_writers_do_not_lose_rows(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    paths = [csv_of(tmp_path / f"{usage}.csv", range(start, start + 300), usage)
             for start, usage in ((0, "Training"), (1000, "PublicTest"), (2000, "PrivateTest"))]
    script = ("import sys\nfrom fercurate.sources import open_source\nfrom fercurate.workspace import Workspace\n"
              "Workspace(sys.argv[1]).ingest(open_source('fer2013', sys.argv[2]))")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(root), str(path)]) for path in paths]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]
    manifest = Workspace(root).manifest()
    assert manifest.num_rows == 900
    assert sorted(set(manifest["source_split"].to_pylist())) == ["PrivateTest", "PublicTest", "Training"]
    assert len(Workspace(root).history()) == 3


def test_overwrite_never_deletes_a_workspace_or_a_folder_fercurate_did_not_write(workspace: Workspace,
                                                                                 tmp_path: Path) -> None:
    """--overwrite once deleted whatever OUT was, the workspace (and the user's files) included."""
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    refused = {
        workspace.root: "inside the workspace",
        tmp_path: "contains or lies inside the workspace",
        workspace.root / "images": "inside the workspace",
        mine: "not a folder fercurate exported",
    }
    for output, reason in refused.items():
        with pytest.raises(ExportError, match=reason):
            export_dataset(workspace, output, ExportOptions(formats=["manifest"], overwrite=True))
    assert workspace.manifest().num_rows == 56 and (mine / "thesis.tex").read_text() == "years of work"
    result = CliRunner().invoke(app, ["export", str(workspace.root), "-w", str(workspace.root), "--overwrite"])
    assert result.exit_code == 2 and "workspace" in result.output and workspace.manifest_path.is_file()

    output = tmp_path / "export"
    export_dataset(workspace, output, ExportOptions(formats=["manifest"]))
    export_dataset(workspace, output, ExportOptions(formats=["fer2013-csv"], overwrite=True))  # an export: replaced
    assert sorted(path.name for path in output.iterdir()) == [".fercurate-export", "README.md", "export.json",
                                                              "fer2013.csv"]


def test_exports_that_select_nothing_are_refused(workspace: Workspace, tmp_path: Path) -> None:
    cases = {
        "--format=": "no export format chosen",
        "--sources=affectnet": "affectnet, which the workspace does not hold",
        "--balance=uniform:0": "leaves no training row",
        "--exclude-flag=dummy": None,
    }
    for option, message in cases.items():
        result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "-w", str(workspace.root), option])
        if message is None:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2 and message in result.output, (option, result.output)
        assert not (tmp_path / "out").exists()


def test_sigkill_mid_export_leaves_no_half_export_and_the_next_export_cleans_up(workspace: Workspace,
                                                                                 tmp_path: Path) -> None:
    output = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        import fercurate.export as export
        from fercurate.workspace import Workspace
        def dying(*_):
            os.kill(os.getpid(), signal.SIGKILL)
        export.write_fer2013_csv = dying  # dies after the manifest was written into the staging folder
        export.export_dataset(Workspace({str(workspace.root)!r}), {str(output)!r},
                              export.ExportOptions(formats=["manifest", "fer2013-csv"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9, result.stderr
    assert not output.exists()
    leftovers = [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.")]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0] / "manifest.parquet").is_file()
    export_dataset(workspace, output, ExportOptions(formats=["manifest"]))
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out.")]
    assert (output / "manifest.parquet").is_file()


def test_sigkill_mid_synthesize_keeps_the_manifest_and_a_rerun_completes(workspace: Workspace) -> None:
    before = workspace.manifest()
    script = textwrap.dedent(f"""
        import os, signal
        import fercurate.workspace as workspace_module
        from fercurate.synth import SynthesizeOptions, synthesize
        from fercurate.workspace import Workspace
        def dying(*_):
            os.kill(os.getpid(), signal.SIGKILL)  # every new image is on disk; the manifest is next
        workspace_module.Workspace.write_manifest = dying
        synthesize(Workspace({str(workspace.root)!r}), SynthesizeOptions(target="min:10", max_synthetic_share=0.5))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9, result.stderr
    assert workspace.manifest().equals(before)
    from fercurate.synth import SynthesizeOptions, synthesize

    report = synthesize(workspace, SynthesizeOptions(target="min:10", max_synthetic_share=0.5))
    assert sum(report.added.values()) == workspace.manifest().num_rows - before.num_rows > 0
