"""A Hugging Face dataset: a local ``save_to_disk`` copy, local parquet files, or a hub repo by name.

Nothing is fetched unless the user names a hub repository. The image column is the first
``Image`` feature and the label column the first ``ClassLabel`` (or the ones named). A
ClassLabel's order is the dataset's own, not FER2013's: each class *name* is mapped to a
canonical emotion (user label map first, then common spellings); classes that map to nothing
are skipped, per image, with that reason.

A hub name is checked with one quick metadata request before anything is downloaded, so offline
(or with ``HF_HUB_OFFLINE=1``) and for a repository that does not exist the ingest fails at once with
a :class:`SourceError` instead of retrying for half a minute; a local file that is not parquet is a
``SourceError`` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fercurate.schema import canonical_label
from fercurate.sources.base import Face, Item, Skip, Source, SourceError, UnreadableImage, decode_image
from fercurate.sources.imagefolder import parse_label_map

if TYPE_CHECKING:
    import datasets
    import numpy as np


def _load(reference: str, split: str | None) -> tuple[str, datasets.DatasetDict]:
    """The dataset behind ``reference`` as splits, and the name its rows' source gets."""
    import datasets  # heavy: imported only when a hub dataset is ingested

    path = Path(reference).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        name = f"local/{path.name}"
    elif path.is_file() and path.suffix == ".parquet" or path.is_dir() and any(path.rglob("*.parquet")):
        import pyarrow as pa

        try:
            loaded = datasets.load_dataset("parquet", data_files=_parquet_splits(path))
        except (pa.ArrowException, datasets.exceptions.DatasetGenerationError) as error:
            cause = error.__cause__ or error
            raise SourceError(f"{path} cannot be read as parquet ({type(cause).__name__}: {cause})",
                              "give parquet files written by pyarrow, pandas or `datasets`") from None
        name = f"local/{path.stem}"
    elif path.exists():
        raise SourceError(f"{path} is neither a save_to_disk folder nor parquet files")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", reference):
        _check_hub_repo(reference)
        loaded = datasets.load_dataset(reference)  # the user named a hub repo: the one network access
        name = reference
    else:
        raise SourceError(f"{reference} does not exist and is not a hub repo name (owner/name)")
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({split or "train": loaded})
    if split is not None:
        if split not in loaded:
            raise SourceError(f"{reference} has no split {split!r}; it has {', '.join(loaded)}")
        loaded = datasets.DatasetDict({split: loaded[split]})
    return name, loaded


def _check_hub_repo(reference: str) -> None:
    """Fail fast, with what to do, when the hub cannot be reached or has no dataset ``reference``."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = "fetching a hub dataset needs network access; or give a local path (a save_to_disk folder or parquet)"
    if constants.HF_HUB_OFFLINE:
        raise SourceError(f"cannot fetch {reference}: HF_HUB_OFFLINE is set", offline)
    try:
        HfApi().dataset_info(reference, timeout=10)
    except GatedRepoError:
        return  # it exists; the download says how to get access
    except RepositoryNotFoundError:
        raise SourceError(f"there is no dataset {reference} on the Hugging Face Hub (or it is private)",
                          "check the name, or log in with `hf auth login` for a private one") from None
    except Exception as error:  # noqa: BLE001 - any failure of this one request means the hub is out of reach
        raise SourceError(f"cannot reach the Hugging Face Hub for {reference} ({type(error).__name__}: {error})",
                          offline) from None


def _parquet_splits(path: Path) -> dict[str, list[str]]:
    """Parquet files per split: a single file is ``train``; a folder's files are split the way the
    hub splits a repo (``data/test-00000-of-00001.parquet`` is ``test``), else all ``train``."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if path.is_file():
        return {"train": [str(path)]}
    found = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path),
                                        allowed_extensions=[".parquet"])
    return {str(split): sorted(files) for split, files in found.items() if files}


def _decode(image: dict[str, Any]) -> np.ndarray:
    """Pixels of an undecoded ``Image`` cell: its bytes, else the file its path names."""
    data = image.get("bytes")
    if not data:
        try:
            data = Path(image["path"]).read_bytes()
        except OSError as error:
            raise UnreadableImage(f"{image['path']}: {error.strerror or error}") from error
    return decode_image(data)


class HubDataset(Source):
    """Rows of a Hugging Face dataset, each image decoded by fercurate in parallel."""

    name = "hub"

    def __init__(self, path: str | Path, split: str | None = None, image_column: str | None = None,
                 label_column: str | None = None, label_map: str | Mapping[str, str] | None = None) -> None:
        import datasets

        self.path = Path(path)
        self.repo, self.splits = _load(str(path), split)
        self.label_map = parse_label_map(label_map)
        features = next(iter(self.splits.values())).features
        self.image_column = image_column or next(
            (column for column, feature in features.items() if isinstance(feature, datasets.Image)), None)
        self.label_column = label_column or next(
            (column for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)), None)
        for role, column in (("image", self.image_column), ("label", self.label_column)):
            if column is None or column not in features:
                raise SourceError(f"{path} has no {role} column (columns: {', '.join(features)}); "
                                  f"name it with --{role}-column")
        label_feature = features[self.label_column]
        self.class_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None

    def options(self) -> dict[str, Any]:
        return {"splits": list(self.splits), "image_column": self.image_column,
                "label_column": self.label_column, "label_map": self.label_map}

    def size_hint(self) -> int | None:
        return sum(len(split) for split in self.splits.values())

    def __iter__(self) -> Iterator[Item]:
        import datasets

        for split_name, split in self.splits.items():
            rows = split.cast_column(self.image_column, datasets.Image(decode=False))
            for index, row in enumerate(rows):
                location = f"{split_name}[{index}]"
                native = row[self.label_column]
                if native is None or self.class_names and isinstance(native, int) and native < 0:
                    yield Skip(location, "missing label", "the row has no label (null, or ClassLabel -1)")
                    continue
                native_text = self.class_names[native] if self.class_names and isinstance(native, int) else str(native)
                label = canonical_label(native_text, self.label_map)
                if label is None:
                    yield Skip(location, "unknown class",
                               f"{native_text!r} is not an emotion; pass a label map such as {native_text}=anger")
                    continue
                image = row[self.image_column]
                if not image or not (image.get("bytes") or image.get("path")):
                    yield Skip(location, "missing image", f"the {self.image_column!r} column is empty")
                    continue
                yield Face(
                    fields={
                        "id": f"hub:{self.repo}/{split_name}/{index:06d}",
                        "source": f"hub:{self.repo}",
                        "source_split": split_name,
                        "origin": location,
                        "label": label,
                        "native_label": native_text,
                    },
                    image=lambda image=image: _decode(image),
                )
