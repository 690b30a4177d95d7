"""One reader per dataset layout, all keeping the contract in :mod:`fercurate.sources.base`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fercurate.sources.base import Face, Relabel, Skip, Source, SourceError, UnreadableImage
from fercurate.sources.ckplus import CkPlus, CkPlus48, FramePolicy, open_ckplus
from fercurate.sources.fer2013 import Fer2013Csv, Fer2013Folder, open_fer2013
from fercurate.sources.ferplus import FerPlus
from fercurate.sources.hub import HubDataset
from fercurate.sources.imagefolder import ImageFolder
from fercurate.sources.jaffe import Jaffe

#: ``fercurate ingest NAME``: the reader (or the function choosing one) for each source name.
SOURCES: dict[str, Callable[..., Source]] = {
    "fer2013": open_fer2013,
    "ferplus": FerPlus,
    "ckplus": open_ckplus,
    "jaffe": Jaffe,
    "imagefolder": ImageFolder,
    "hub": HubDataset,
}


def open_source(name: str, path: str | Path, **options: Any) -> Source:
    """The reader for source ``name`` on ``path``; options left as None take their defaults."""
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}: use one of {', '.join(SOURCES)}")
    return SOURCES[name](path, **{key: value for key, value in options.items() if value is not None})


__all__ = [
    "SOURCES", "CkPlus", "CkPlus48", "Face", "Fer2013Csv", "Fer2013Folder", "FerPlus", "FramePolicy",
    "HubDataset", "ImageFolder", "Jaffe", "Relabel", "Skip", "Source", "SourceError", "UnreadableImage",
    "open_ckplus", "open_fer2013", "open_source",
]
