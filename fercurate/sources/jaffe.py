"""JAFFE (Lyons et al., 1998): 213 posed images of 10 Japanese women.

File names carry everything: ``KA.AN1.39.tiff`` is subject ``KA``, expression ``AN`` (its first
pose), image number 39. Some copies store palette TIFFs; their gray palettes become gray images.
The dataset's documented demographics (female, Japanese) are recorded with the source
``dataset-metadata``; age is not documented and stays ``unknown``.

JAFFE's semantic ratings (the mean of 60 raters on six emotions per expression pose) can be given
as ``ratings``; they become the rows' ``label_votes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.base import Face, Item, Skip, Source, SourceError, image_loader, iter_image_files

EXPRESSIONS = SOURCE_LABEL_MAPS["jaffe"]
FILE_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)$")
#: The rating columns of JAFFE's semantic-ratings file, as canonical emotions.
RATING_COLUMNS = {"HAP": "happiness", "SAD": "sadness", "SUR": "surprise",
                  "ANG": "anger", "DIS": "disgust", "FEA": "fear"}
DEMOGRAPHICS = {"gender": "female", "gender_source": "dataset-metadata",
                "ethnicity": "japanese", "ethnicity_source": "dataset-metadata"}


def read_jaffe_ratings(path: Path) -> dict[str, dict[str, float]]:
    """Semantic ratings per pose (``KA.AN1``): the file's rows are ``N HAP SAD SUR ANG DIS FEA PIC``
    with the pose written ``KA-AN1``; a header line starting with ``#`` names the columns."""
    columns: list[str] = []
    ratings: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        words = line.replace("#", " ").split()
        if not words:
            continue
        if words[0].upper() in RATING_COLUMNS or words[0].upper() == "N":
            columns = [word.upper() for word in words if word.upper() in RATING_COLUMNS]
            continue
        if not columns or len(words) < len(columns) + 2:
            continue
        pose = words[-1].replace("-", ".").upper()
        values = words[1:1 + len(columns)]
        try:
            ratings[pose] = {RATING_COLUMNS[column]: float(value) for column, value in zip(columns, values)}
        except ValueError:
            continue
    if not ratings:
        raise SourceError(f"{path} holds no JAFFE semantic ratings (rows like '1 2.87 ... KA-AN1')")
    return ratings


class Jaffe(Source):
    """JAFFE ``*.tiff`` files, in a folder or an archive."""

    name = "jaffe"

    def __init__(self, path: str | Path, ratings: str | Path | None = None) -> None:
        super().__init__(path)
        self.ratings_path = Path(ratings).expanduser() if ratings is not None else None
        if self.ratings_path is not None and not self.ratings_path.is_file():
            raise SourceError(f"ratings file {self.ratings_path} does not exist")

    def options(self) -> dict[str, Any]:
        return {"ratings": str(self.ratings_path) if self.ratings_path else None}

    def __iter__(self) -> Iterator[Item]:
        ratings = read_jaffe_ratings(self.ratings_path) if self.ratings_path else {}
        for image_file in iter_image_files(self.path):
            name = Path(image_file.relpath).name
            match = FILE_NAME.match(name.rsplit(".", 1)[0])
            if match is None:
                yield Skip(image_file.relpath, "unrecognised file name", "expected SUBJECT.EXPRESSIONpose.number.tiff")
                continue
            subject, expression, pose, _ = match.groups()
            if expression not in EXPRESSIONS:
                yield Skip(image_file.relpath, "unknown expression code",
                           f"{expression!r} is not one of {', '.join(EXPRESSIONS)}")
                continue
            yield Face(
                fields={
                    "id": f"jaffe/{match.group(0)}",
                    "source": "jaffe",
                    "origin": image_file.relpath,
                    "label": EXPRESSIONS[expression],
                    "native_label": expression,
                    "label_votes": ratings.get(f"{subject}.{expression}{pose}"),
                    "subject_id": subject,
                    **DEMOGRAPHICS,
                },
                image=image_loader(image_file),
            )
