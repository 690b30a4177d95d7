"""The contract every registered source keeps (modelled on torchvision's test/datasets_utils.py).

Each source in :data:`fercurate.sources.SOURCES` gets the same tests: a missing path is a
:class:`SourceError` naming the path; an empty folder is a SourceError; an unreadable file is a
SourceError or counted skips, never another exception; the faces of a small valid input have unique
ids; ``options()`` is JSON. A source only declares how to build its small valid and unreadable
inputs (:data:`INPUTS`); registering a source without them fails :func:`test_every_source_is_covered`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import face_pixels, pixel_string, write_fer2013_csv
from PIL import Image

from fercurate.errors import OptionError
from fercurate.sources import SOURCES, Face, Relabel, Skip, SourceError, open_source


def _images(root: Path, names: list[str]) -> Path:
    for seed, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face_pixels(seed)).save(root / name)
    return root


def _fer2013(folder: Path) -> Path:
    rows = [(str(seed % 7), pixel_string(face_pixels(seed)), "Training") for seed in range(3)]
    return write_fer2013_csv(folder / "fer2013.csv", rows)


def _ferplus(folder: Path) -> Path:
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    (folder / "fer2013new.csv").write_text(f"{header}\nTraining,fer0000000.png,10,0,0,0,0,0,0,0,0,0\n"
                                           "Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0\n")
    return folder / "fer2013new.csv"


def _hub(folder: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["happy", "sad"])})
    split = datasets.Dataset.from_dict({"image": [Image.fromarray(face_pixels(seed)) for seed in range(3)],
                                        "label": [0, 1, 0]}, features=features)
    split.to_parquet(str(folder / "faces.parquet"))
    return folder / "faces.parquet"


def _garbage(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return folder / name
    return build


@dataclass(frozen=True)
class Inputs:
    """How to build a source's small valid input and an unreadable file (each under a given
    folder), the options for both, and why a rule does not apply where one does not."""

    valid: Callable[[Path], Path]
    unreadable: Callable[[Path], Path]
    options: dict[str, Any] | None = None
    no_path_rules: str | None = None  # set for a source that creates its own input


INPUTS: dict[str, Inputs] = {
    "demo": Inputs(lambda folder: folder / "demo", _garbage("demo-file"), {"per_class": 2},
                   no_path_rules="the demo writes its faces into the folder it is given"),
    "fer2013": Inputs(_fer2013, _garbage("fer2013.csv")),
    "ferplus": Inputs(_ferplus, _garbage("fer2013new.csv")),
    "ckplus": Inputs(lambda folder: _images(folder / "CK+48", ["happy/S005_001_00000001.png",
                                                                "sadness/S010_002_00000003.png"]),
                     _garbage("ck48.zip")),
    "jaffe": Inputs(lambda folder: _images(folder / "jaffe", ["KA.AN1.39.tiff", "KA.HA1.29.tiff"]),
                    _garbage("jaffe.tar.gz")),
    "imagefolder": Inputs(lambda folder: _images(folder / "faces", ["happy/a.png", "sad/a.png"]),
                          _garbage("faces.zip")),
    "hub": Inputs(_hub, _garbage("faces.parquet")),
}
NAMES = list(SOURCES)


def _items(name: str, path: Path) -> list[Face | Skip | Relabel]:
    return list(open_source(name, path, **(INPUTS[name].options or {})))


def test_every_source_is_covered() -> None:
    assert sorted(INPUTS) == sorted(SOURCES)
    assert all(spec.help for spec in SOURCES.values())


@pytest.mark.parametrize("name", NAMES)
def test_missing_path_names_the_path(name: str, tmp_path: Path) -> None:
    if INPUTS[name].no_path_rules:
        pytest.skip(INPUTS[name].no_path_rules)
    missing = tmp_path / "no-such-download"
    with pytest.raises(SourceError, match="no-such-download"):
        _items(name, missing)


@pytest.mark.parametrize("name", NAMES)
def test_empty_folder_is_a_source_error(name: str, tmp_path: Path) -> None:
    if INPUTS[name].no_path_rules:
        pytest.skip(INPUTS[name].no_path_rules)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError):
        _items(name, tmp_path / "empty")


@pytest.mark.parametrize("name", NAMES)
def test_unreadable_file_is_a_source_error_or_skips(name: str, tmp_path: Path) -> None:
    try:
        items = _items(name, INPUTS[name].unreadable(tmp_path))
    except SourceError:
        return
    assert all(isinstance(item, Skip) for item in items), items


@pytest.mark.parametrize("name", NAMES)
def test_ids_unique_and_options_json(name: str, tmp_path: Path) -> None:
    path = INPUTS[name].valid(tmp_path)
    source = open_source(name, path, **(INPUTS[name].options or {}))
    items = list(source)
    ids = [item.fields["id"] if isinstance(item, Face) else item.id for item in items if not isinstance(item, Skip)]
    assert ids and len(ids) == len(set(ids))
    json.dumps(source.options())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="does not take"):
        open_source(name, tmp_path, no_such_option=1)
