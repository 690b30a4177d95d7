"""The workspace: merge rules, idempotent re-ingest, atomic commits, the lock (writers and readers),
exact image counts, file modes that follow the umask, and clear errors for damaged workspaces."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv

from fercurate import workspace as workspace_module
from fercurate.atomic import current_umask
from fercurate.errors import SourceError, WorkspaceError
from fercurate.sources import Fer2013Csv, open_source
from fercurate.workspace import Workspace, WorkspaceLocked, pixel_sha1


def csv_of(path: Path, seeds: range, usage: str = "Training") -> Path:
    return write_fer2013_csv(path, [(str(seed % 7), pixel_string(face_pixels(seed)), usage) for seed in seeds])


def test_two_sources_merge_and_identical_faces_share_one_file(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
    demo = Fer2013Csv(csv_of(tmp_path / "b.csv", range(2, 5)), dataset="demo")
    report = space.ingest(demo)
    manifest = space.manifest()
    assert manifest.num_rows == 6 and report.rows_added == 3
    assert sorted(set(manifest["source"].to_pylist())) == ["demo", "fer2013"]
    assert report.images_written == 2  # face 2 is in both files: stored once
    assert len(list((space.root / "images").rglob("*.png"))) == 5


def test_killed_commit_keeps_previous_manifest_and_rerun_completes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
    before = space.manifest_path.read_bytes()
    bigger = csv_of(tmp_path / "b.csv", range(10), usage="PublicTest")
    real_write = workspace_module._atomic_write_parquet

    def killed_at_manifest(table: object, target: Path) -> None:
        if target.name == "manifest.parquet":
            raise KeyboardInterrupt  # the process dies just before the manifest rename
        real_write(table, target)

    monkeypatch.setattr(workspace_module, "_atomic_write_parquet", killed_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        space.ingest(open_source("fer2013", bigger))
    assert space.manifest_path.read_bytes() == before
    monkeypatch.setattr(workspace_module, "_atomic_write_parquet", real_write)
    report = space.ingest(open_source("fer2013", bigger))
    assert space.manifest().num_rows == 13
    assert report.images_written == 0  # images of the killed run were complete and are reused


def test_lock_times_out_with_a_clear_message_and_nests_within_one_thread(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    with space.lock():
        with Workspace(space.root).lock(timeout=0.2):  # a nested step of the same writer does not wait
            pass
        with ThreadPoolExecutor(1) as other:  # another writer (thread or process) waits, then is told
            with pytest.raises(WorkspaceLocked, match="another fercurate process"):
                other.submit(lambda: Workspace(space.root).lock(timeout=0.2).__enter__()).result()


def test_pixel_sha1_depends_on_pixels_and_shape() -> None:
    pixels = face_pixels(1)
    assert pixel_sha1(pixels) == pixel_sha1(pixels.copy())
    assert pixel_sha1(pixels) != pixel_sha1(pixels.reshape(24, 96))
    assert len(pixel_sha1(pixels)) == 40


def test_failed_first_ingest_leaves_no_workspace(tmp_path: Path) -> None:
    class Broken(Fer2013Csv):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from islice(super().__iter__(), 2)
            raise SourceError("the archive ends early")

    space = Workspace(tmp_path / "new")
    with pytest.raises(SourceError):
        space.ingest(Broken(csv_of(tmp_path / "a.csv", range(5))))
    assert not space.root.exists()
    space.ingest(open_source("fer2013", csv_of(tmp_path / "b.csv", range(3))))
    with pytest.raises(SourceError):  # an existing workspace is never removed
        space.ingest(Broken(csv_of(tmp_path / "a.csv", range(5))))
    assert space.manifest().num_rows == 3


def test_images_written_counts_each_new_file_once(tmp_path: Path) -> None:
    seeds = [1, 2, 1, 3, 2]  # rows 3 and 5 repeat the pixels of rows 1 and 2
    path = write_fer2013_csv(tmp_path / "a.csv", [("0", pixel_string(face_pixels(seed)), "Training") for seed in seeds])
    report = Workspace(tmp_path / "ws").ingest(open_source("fer2013", path), workers=4)
    assert report.rows_added == 5 and report.images_written == 3
    target = str(tmp_path / "race" / "ab" / "x.png")
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda _: workspace_module._atomic_write_png(face_pixels(7), target), range(32)))
    assert created.count(True) == 1 and len(os.listdir(Path(target).parent)) == 1


def test_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        space = Workspace(tmp_path / "ws")
        space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
        assert current_umask() == 0o022
        for path in (space.manifest_path, space.skips_path, next((space.root / "images").rglob("*.png"))):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(previous)


def test_damaged_workspaces_are_workspace_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        Workspace(tmp_path / "file")
    with pytest.raises(WorkspaceError, match="there is no workspace"):
        with Workspace(tmp_path / "none").lock(shared=True):
            pass
    assert not (tmp_path / "none").exists()
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
    space.skips_path.write_bytes(b"PAR1 truncated")
    with pytest.raises(WorkspaceError, match="skips.parquet is damaged or truncated"):
        space.skips()
    space.history_path.write_text('{"ok": 1}\n{"broken\n')
    with pytest.raises(WorkspaceError, match="history.jsonl is damaged"):
        space.history()


def test_readers_share_the_lock_and_writers_wait(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "ws")
    space.ingest(open_source("fer2013", csv_of(tmp_path / "a.csv", range(3))))
    with space.lock(shared=True), Workspace(space.root).lock(shared=True, timeout=0.2):
        with pytest.raises(WorkspaceLocked):
            with Workspace(space.root).lock(timeout=0.2):
                pass
