"""JAFFE (Lyons et al., 1998): 213 posed images of 10 Japanese women.

File names carry everything: ``KA.AN1.39.tiff`` is subject ``KA``, expression ``AN`` (its first
pose), image number 39. Some copies store palette TIFFs; their gray palettes become gray images.
The dataset's documented demographics (female, Japanese) are recorded with the source
``dataset-metadata``; age is not documented and stays ``unknown``.

JAFFE's semantic ratings (the mean of 60 raters on six emotions per expression pose) can be given
as ``ratings``; they become the rows' ``label_votes``. A ratings row that cannot be read is a
counted skip (``malformed ratings row``, with its line) and its pose's faces get no votes; a file
name not in JAFFE's pattern, or with an unknown expression code, is a counted skip of that image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.base import DEFAULT_MAX_MEMBER_BYTES, Face, Item, Skip, Source, SourceError, image_loader, iter_image_files

EXPRESSIONS = SOURCE_LABEL_MAPS["jaffe"]
FILE_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)$")
RATED_POSE = re.compile(r"^[A-Z]{2}\.[A-Z]{2}\d+$")
#: The rating columns of JAFFE's semantic-ratings file, as canonical emotions.
RATING_COLUMNS = {"HAP": "happiness", "SAD": "sadness", "SUR": "surprise",
                  "ANG": "anger", "DIS": "disgust", "FEA": "fear"}
DEMOGRAPHICS = {"gender": "female", "gender_source": "dataset-metadata",
                "ethnicity": "japanese", "ethnicity_source": "dataset-metadata"}


def read_jaffe_ratings(path: Path, skips: list[Skip] | None = None) -> dict[str, dict[str, float]]:
    """Semantic ratings per pose (``KA.AN1``): the file's rows are ``N HAP SAD SUR ANG DIS FEA PIC``
    with the pose written ``KA-AN1``; a header line starting with ``#`` names the columns.

    A row that cannot be read (too few values, a value that is not a finite number, a pose name
    not like ``KA-AN1``) is appended to ``skips`` as ``malformed ratings row`` with its line."""
    columns: list[str] = []
    ratings: dict[str, dict[str, float]] = {}
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise SourceError(f"{path} is not a text file of JAFFE semantic ratings ({error})") from None
    for number, line in enumerate(lines, start=1):
        words = line.replace("#", " ").split()
        if not words:
            continue
        if words[0].upper() in RATING_COLUMNS or words[0].upper() == "N":
            columns = [word.upper() for word in words if word.upper() in RATING_COLUMNS]
            continue
        pose = words[-1].replace("-", ".").upper()
        problem = None
        if not columns:
            problem = "a rating row before the header line naming the columns"
        elif len(words) < len(columns) + 2:
            problem = f"{len(words)} values, expected {len(columns) + 2}"
        elif not RATED_POSE.match(pose):
            problem = f"pose {words[-1][:40]!r} is not like KA-AN1"
        else:
            try:
                values = [float(value) for value in words[1:1 + len(columns)]]
            except ValueError:
                values = [float("nan")]
            if not all(math.isfinite(value) for value in values):
                problem = "a rating that is not a finite number"
            else:
                ratings[pose] = {RATING_COLUMNS[column]: value for column, value in zip(columns, values)}
        if problem is not None and skips is not None:
            skips.append(Skip(f"{path.name}:{number}", "malformed ratings row", problem))
    if not ratings:
        raise SourceError(f"{path} holds no JAFFE semantic ratings (rows like '1 2.87 ... KA-AN1')")
    return ratings


class Jaffe(Source):
    """JAFFE ``*.tiff`` files, in a folder or an archive."""

    name = "jaffe"

    def __init__(self, path: str | Path, ratings: str | Path | None = None,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> None:
        super().__init__(path, max_member_bytes)
        self.ratings_path = Path(ratings).expanduser() if ratings is not None else None
        if self.ratings_path is not None and not self.ratings_path.is_file():
            raise SourceError(f"ratings file {self.ratings_path} does not exist")

    def options(self) -> dict[str, Any]:
        return {"ratings": str(self.ratings_path) if self.ratings_path else None, "max_member_bytes": self.max_member_bytes}

    def __iter__(self) -> Iterator[Item]:
        rating_skips: list[Skip] = []
        ratings = read_jaffe_ratings(self.ratings_path, rating_skips) if self.ratings_path else {}
        yield from rating_skips
        for image_file in iter_image_files(self.path, self.max_member_bytes):
            if isinstance(image_file, Skip):
                yield image_file
                continue
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
