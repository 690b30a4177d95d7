"""Any ``<class>/<image>`` tree (optionally ``<split>/<class>/<image>``), in a folder or archive.

Class folders are mapped to canonical emotions by the user's label map first, then by common
spellings (``happy`` -> happiness, ``angry`` -> anger, ...). Images in a folder that maps to no
emotion are skipped with that reason, so a typo in a label map shows up in the summary.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fercurate.schema import CANONICAL_LABELS, canonical_label
from fercurate.sources.base import DEFAULT_MAX_MEMBER_BYTES, Face, Item, Skip, Source, SourceError, image_loader, is_archive, iter_image_files

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                 "validation": "validation", "test": "test", "testing": "test"}


def parse_label_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """A label map from ``"angry=anger,happy=happiness"`` (or a mapping), checked against the
    canonical emotions."""
    if text is None:
        return {}
    pairs = text.items() if isinstance(text, Mapping) else (
        item.split("=", 1) for item in text.split(",") if item.strip())
    mapping: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise SourceError(f"label map entries are NATIVE=EMOTION, got {'='.join(pair)!r}")
        native, emotion = (part.strip() for part in pair)
        if emotion not in CANONICAL_LABELS:
            raise SourceError(f"label map sends {native!r} to {emotion!r}, which is not one of "
                              f"{', '.join(CANONICAL_LABELS)}")
        mapping[native] = emotion
    return mapping


class ImageFolder(Source):
    """A folder (or archive) of ``<class>/<image>`` files; ``name`` names the collection in ids."""

    name = "imagefolder"

    def __init__(self, path: str | Path, label_map: str | Mapping[str, str] | None = None,
                 collection: str | None = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> None:
        super().__init__(path, max_member_bytes)
        self.label_map = parse_label_map(label_map)
        stem = self.path.name.split(".")[0] if is_archive(self.path) else self.path.name
        self.collection = collection or re.sub(r"[^A-Za-z0-9_.+-]", "_", stem) or "images"

    def options(self) -> dict[str, Any]:
        return {"label_map": self.label_map, "collection": self.collection, "max_member_bytes": self.max_member_bytes}

    def __iter__(self) -> Iterator[Item]:
        for image_file in iter_image_files(self.path, self.max_member_bytes):
            if isinstance(image_file, Skip):
                yield image_file
                continue
            parts = Path(image_file.relpath).parts
            folder = parts[-2] if len(parts) >= 2 else ""
            label = canonical_label(folder, self.label_map) if folder else None
            if label is None:
                yield Skip(image_file.relpath, "unknown class folder",
                           f"{folder!r} is not an emotion; pass a label map such as {folder or 'x'}=anger")
                continue
            split = SPLIT_FOLDERS.get(parts[-3].lower()) if len(parts) >= 3 else None
            yield Face(
                fields={
                    "id": f"imagefolder/{self.collection}/{image_file.relpath.rsplit('.', 1)[0]}",
                    "source": "imagefolder",
                    "source_split": split,
                    "origin": image_file.relpath,
                    "label": label,
                    "native_label": folder,
                },
                image=image_loader(image_file),
            )
