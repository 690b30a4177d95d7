"""Shared fixtures: fer2013.csv builders, the optional real data in ../shared/data, and the one
FiftyOne database of a test session (a started database cannot move)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fercurate.audit.fiftyone_database import prepare_fiftyone_database
from fercurate.sources import Source
from fercurate.workspace import Workspace

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def face_pixels(seed: int) -> np.ndarray:
    """A distinct 48x48 gray image per seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(48, 48), dtype=np.uint8)


def fer2013_line(emotion: str, pixels: str, usage: str, columns: Sequence[str]) -> str:
    values = {"emotion": emotion, "pixels": pixels, "usage": usage}
    return ",".join(values[column.strip().lower()] for column in columns)


def write_fer2013_csv(path: Path, rows: Sequence[tuple[str, str, str]],
                      header: str = "emotion,pixels,Usage") -> Path:
    """Write rows of (emotion, pixel string, usage) under either fer2013.csv header variant."""
    columns = header.split(",")
    path.write_text(header + "\n" + "".join(fer2013_line(*row, columns) + "\n" for row in rows))
    return path


def pixel_string(pixels: np.ndarray) -> str:
    return " ".join(map(str, pixels.ravel().tolist()))


def ingest_rows(tmp_path: Path, source: Source) -> tuple[Workspace, dict[str, dict[str, Any]]]:
    """Ingest ``source`` into a fresh workspace; return it and its rows by id."""
    workspace = Workspace(tmp_path / "ws")
    workspace.ingest(source, workers=2)
    return workspace, {row["id"]: row for row in workspace.manifest().to_pylist()}


def skip_pairs(workspace: Workspace) -> list[tuple[str, str]]:
    """The workspace's recorded skips as sorted (location, reason) pairs."""
    table = workspace.skips()
    return sorted(zip(table["location"].to_pylist(), table["reason"].to_pylist()))


@pytest.fixture
def shared_data() -> Path:
    """The real datasets beside the project; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (only present on development machines)")
    return SHARED_DATA


def fiftyone_database_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one database folder of a test session (shared by every test module using FiftyOne)."""
    folder = tmp_path_factory.getbasetemp() / "fiftyone-db"
    prepare_fiftyone_database(folder)
    return folder


@pytest.fixture(scope="session")
def fiftyone_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fiftyone_database_dir(tmp_path_factory)
