"""One reader per dataset layout, all keeping the contract in :mod:`fercurate.sources.base`.

:data:`SOURCES` is the one registry of sources: every name ``fercurate ingest NAME`` and a recipe's
``ingest`` step accept, with its reader factory, its help text and whether it needs a path. The
command line's choices and help and the recipes' step check are derived from it, and
``tests/test_source_contract.py`` runs every registered source through the same contract; adding
a source is adding its module and one :class:`SourceSpec` here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercurate.errors import OptionError
from fercurate.sources.base import (
    DEFAULT_MAX_MEMBER_BYTES, Face, ImageTooLarge, Relabel, Skip, Source, SourceError, UnreadableImage,
)
from fercurate.sources.ckplus import CkPlus, CkPlus48, FramePolicy, open_ckplus
from fercurate.sources.demo import open_demo
from fercurate.sources.fer2013 import Fer2013Csv, Fer2013Folder, open_fer2013
from fercurate.sources.ferplus import FerPlus
from fercurate.sources.hub import HubDataset
from fercurate.sources.imagefolder import ImageFolder
from fercurate.sources.jaffe import Jaffe


@dataclass(frozen=True)
class SourceSpec:
    """One registered source: ``factory(path, **options)`` builds its reader; ``help`` is the line
    the CLI shows; a source with ``default_folder`` (the demo) needs no path and reads or writes
    that folder inside the workspace instead."""

    name: str
    factory: Callable[..., Source]
    help: str
    default_folder: str | None = None

    @property
    def needs_path(self) -> bool:
        """Whether ``fercurate ingest NAME`` must be given a PATH."""
        return self.default_folder is None

    def option_names(self) -> list[str]:
        """The keyword options the factory takes (what a CLI flag or a recipe key may set)."""
        return list(inspect.signature(self.factory).parameters)[1:]


SOURCES: dict[str, SourceSpec] = {spec.name: spec for spec in (
    SourceSpec("demo", open_demo, "the embedded demo faces (the default; no download needed)", "demo-data"),
    SourceSpec("fer2013", open_fer2013, "fer2013.csv or the image-folder release, folder or .tar.gz"),
    SourceSpec("ferplus", FerPlus, "fer2013new.csv or FER+'s data folder, joined onto ingested fer2013.csv rows"),
    SourceSpec("ckplus", open_ckplus, "the original CK+ distribution or CK+48"),
    SourceSpec("jaffe", Jaffe, "the JAFFE .tiff files, folder or archive"),
    SourceSpec("imagefolder", ImageFolder, "any <class>/<image> tree, folder or archive"),
    SourceSpec("hub", HubDataset, "a Hugging Face dataset: save_to_disk folder, parquet or owner/name"),
)}


def sources_help() -> str:
    """One line per registered source, for ``fercurate ingest --help``."""
    return "; ".join(f"{spec.name} ({spec.help})" for spec in SOURCES.values())


def open_source(name: str, path: str | Path | None, workspace_root: Path | None = None, **options: Any) -> Source:
    """The reader for source ``name`` on ``path``; options left as None take their defaults.

    A source that needs no path (the demo) uses its default folder inside ``workspace_root`` when
    ``path`` is None. An option the source does not take is an :class:`OptionError` naming the
    ones it does."""
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}", f"use one of {', '.join(SOURCES)}")
    spec = SOURCES[name]
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(spec.option_names()))
    if unknown:
        raise OptionError(f"source {name} does not take {', '.join(unknown)}",
                          f"it takes {', '.join(spec.option_names()) or 'no options'}")
    if path is None:
        if spec.default_folder is None or workspace_root is None:
            raise SourceError(f"give the path of the {name} download", f"fercurate ingest {name} PATH")
        path = Path(workspace_root) / spec.default_folder
    return spec.factory(path, **given)


__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES", "SOURCES", "CkPlus", "CkPlus48", "Face", "Fer2013Csv", "Fer2013Folder", "FerPlus",
    "FramePolicy", "HubDataset", "ImageFolder", "ImageTooLarge", "Jaffe", "Relabel", "Skip", "Source",
    "SourceError", "SourceSpec", "UnreadableImage", "open_ckplus", "open_fer2013", "open_source", "sources_help",
]
