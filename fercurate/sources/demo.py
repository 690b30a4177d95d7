"""The embedded demo (source ``demo``): procedurally drawn cartoon faces, written as a ``fer2013.csv``.

A newcomer without FER2013 (or any other dataset) still needs to see fercurate work end to end.
This module draws small labelled gray faces (48x48 uint8, like FER2013), one simple expression
per emotion, and writes them in FER2013's own CSV layout, so the demo goes through the real
``fer2013.csv`` reader (``Fer2013Csv(path, dataset="demo")``) rather than a special path.

Faces are drawn with OpenCV at 4x resolution (192x192) and shrunk with ``cv2.INTER_AREA`` so
edges come out anti-aliased; head position, size, tone, expression strength, blur and noise are
jittered so no two faces are equal. The expressions are exaggerated on purpose: each class must
be recognisable to a person looking at a contact sheet and separable by a trivial classifier.
"""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np

from fercurate.errors import OptionError, SourceError
from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.fer2013 import SIDE, Fer2013Csv

#: Canonical emotion -> FER2013 emotion code (anger 0, disgust 1, fear 2, happiness 3, sadness 4,
#: surprise 5, neutral 6), taken from the one FER2013 label table in ``fercurate.schema``.
DEMO_EMOTION_CODES: dict[str, int] = {label: int(code) for code, label in SOURCE_LABEL_MAPS["fer2013"].items()}

_SCALE = 4  # faces are drawn at SIDE * _SCALE and shrunk, for anti-aliased shapes
_CANVAS = SIDE * _SCALE
_NOISE_SIGMA = 4.0  # gray levels of per-pixel Gaussian noise, after shrinking
_CSV_HEADER = ("emotion", "pixels", "Usage")

_Mouth = Literal["line", "tight", "smile", "frown", "o", "stretch", "sneer"]


class _Expression(NamedTuple):
    """How one emotion shapes the face, in canvas pixels at head scale 1 (negative dy = up)."""

    brow_inner_dy: float  # inner brow ends: + lowers them (anger), - raises them (sadness, fear)
    brow_outer_dy: float
    eye_open: float  # half-height of the eye opening; 0 draws closed, smiling eyes (upward arcs)
    mouth: _Mouth
    nose_wrinkles: bool


_EXPRESSIONS: dict[str, _Expression] = {
    "anger": _Expression(20, -8, 4, "tight", False),
    "disgust": _Expression(8, 6, 4, "sneer", True),
    "fear": _Expression(-16, -6, 12, "stretch", False),
    "happiness": _Expression(-4, -4, 0, "smile", False),
    "sadness": _Expression(-16, 8, 7, "frown", False),
    "surprise": _Expression(-20, -20, 13, "o", False),
    "neutral": _Expression(0, 0, 8, "line", False),
}


def _pt(x: float, y: float) -> tuple[int, int]:
    """A canvas point, rounded to the integer pixel OpenCV wants."""
    return round(x), round(y)


def _draw_mouth(canvas: np.ndarray, kind: _Mouth, cx: float, my: float, s: float, k: float, side: int,
                ink: int) -> None:
    """Draw the mouth shape ``kind`` centred at (cx, my); ``k`` scales how strong it is and
    ``side`` (+1 or -1) picks which corner a one-sided sneer lifts."""
    w = 24 * s  # half-width of a relaxed mouth
    thick = round(10 * s)
    if kind == "line":
        cv2.line(canvas, _pt(cx - w, my), _pt(cx + w, my), ink, thick, cv2.LINE_AA)
    elif kind == "tight":  # short and pressed
        y = my + 2 * s
        cv2.line(canvas, _pt(cx - 0.65 * w, y), _pt(cx + 0.65 * w, y), ink, thick + 4, cv2.LINE_AA)
    elif kind == "smile":  # lower half of an ellipse: corners up
        cv2.ellipse(canvas, _pt(cx, my - 14 * s * k), _pt(w + 8 * s, 22 * s * k), 0, 0, 180, ink, thick,
                    cv2.LINE_AA)
    elif kind == "frown":  # upper half of an ellipse: corners down
        cv2.ellipse(canvas, _pt(cx, my + 14 * s * k), _pt(w, 18 * s * k), 0, 180, 360, ink, thick, cv2.LINE_AA)
    elif kind == "o":  # open round mouth
        cv2.ellipse(canvas, _pt(cx, my + 4 * s), _pt(11 * s * k, 16 * s * k), 0, 0, 360, ink, -1, cv2.LINE_AA)
    elif kind == "stretch":  # wide open, pulled sideways
        cv2.ellipse(canvas, _pt(cx, my + 2 * s), _pt(w + 8 * s, 10 * s * k), 0, 0, 360, ink, -1, cv2.LINE_AA)
    else:  # sneer: flat on one side, upper lip raised on the other
        corners = [(-w, 5), (-0.3 * w, 2), (0.3 * w, -3 * k), (0.7 * w, -15 * k), (w, -9 * k)]
        points = np.array([_pt(cx + side * dx, my + dy * s) for dx, dy in corners], dtype=np.int32)
        cv2.polylines(canvas, [points], False, ink, thick, cv2.LINE_AA)


def _draw_face(canvas: np.ndarray, expression: _Expression, cx: float, cy: float, s: float, skin: int, ink: int,
               k: float, side: int) -> None:
    """Draw one face centred at (cx, cy), scaled by ``s``, on ``canvas`` (already the background
    gray); ``k``, the expression's strength, scales how far brows and mouth move."""
    cv2.ellipse(canvas, _pt(cx, cy), _pt(66 * s, 82 * s), 0, 0, 360, skin, -1, cv2.LINE_AA)
    eye_y, brow_y, mouth_y = cy - 14 * s, cy - 36 * s, cy + 44 * s
    sclera = min(255, skin + 45)
    line = round(3 * s)  # thin strokes: nose, wrinkles
    for sign in (-1, 1):  # left, then right half of the face
        eye_x = cx + sign * 26 * s
        if expression.eye_open:  # white with a dark pupil, the pupil cut by narrow lids
            opening = expression.eye_open * s
            cv2.ellipse(canvas, _pt(eye_x, eye_y), _pt(13 * s, opening), 0, 0, 360, sclera, -1, cv2.LINE_AA)
            cv2.ellipse(canvas, _pt(eye_x, eye_y), _pt(6 * s, min(6 * s, opening)), 0, 0, 360, ink, -1,
                        cv2.LINE_AA)
        else:  # closed in a smile: the upper half of an ellipse
            cv2.ellipse(canvas, _pt(eye_x, eye_y + 4 * s), _pt(12 * s, 9 * s), 0, 180, 360, ink, round(6 * s),
                        cv2.LINE_AA)
        inner = _pt(cx + sign * 10 * s, brow_y + expression.brow_inner_dy * s * k)
        outer = _pt(cx + sign * 42 * s, brow_y + expression.brow_outer_dy * s * k)
        cv2.line(canvas, inner, outer, ink, round(9 * s), cv2.LINE_AA)
    nose = max(0, skin - 55)
    cv2.line(canvas, _pt(cx, cy - 4 * s), _pt(cx - 5 * s, cy + 18 * s), nose, line, cv2.LINE_AA)
    cv2.line(canvas, _pt(cx - 5 * s, cy + 18 * s), _pt(cx + 5 * s, cy + 19 * s), nose, line, cv2.LINE_AA)
    if expression.nose_wrinkles:  # creases slanting down either side of the bridge of the nose
        for sign in (-1, 1):
            cv2.line(canvas, _pt(cx + sign * 5 * s, cy - 6 * s), _pt(cx + sign * 15 * s, cy + 4 * s), ink, line,
                     cv2.LINE_AA)
    _draw_mouth(canvas, expression.mouth, cx, mouth_y, s, k, side, ink)


def draw_demo_faces(per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` faces for each of FER2013's seven emotions.

    Returns ``(images, codes)``: ``images`` is uint8 ``(N, 48, 48)`` and ``codes`` int64 ``(N,)``
    FER2013 emotion codes, ``N = 7 * per_class``, grouped by code in ascending order (all code-0
    faces, then all code-1 faces, ...). The same ``seed`` always gives the same arrays.
    """
    if per_class < 1:
        raise OptionError(f"per_class must be at least 1, got {per_class}")
    codes = np.repeat(np.arange(len(DEMO_EMOTION_CODES), dtype=np.int64), per_class)
    expression_of_code = {code: _EXPRESSIONS[label] for label, code in DEMO_EMOTION_CODES.items()}
    n = codes.size
    rng = np.random.default_rng(seed)
    # Every random choice is drawn up front, as whole arrays, so a face depends only on the seed.
    # Head centre: a little below the canvas centre, leaving room for raised brows, then moved
    # by up to 2 output pixels either way.
    centre = _CANVAS / 2 + np.array([0, 4]) + rng.uniform(-2, 2, size=(n, 2)) * _SCALE
    scale = rng.uniform(1.0, 1.1, size=n)
    background = rng.integers(50, 101, size=n)
    skin = rng.integers(155, 206, size=n)
    ink = rng.integers(15, 61, size=n)
    strength = rng.uniform(0.8, 1.2, size=n)
    side = rng.choice([-1, 1], size=n)
    blur_sigma = rng.uniform(0.4, 0.9, size=n) * _SCALE  # 0.4..0.9 output pixels
    noise = rng.normal(0.0, _NOISE_SIGMA, size=(n, SIDE, SIDE))

    faces = np.empty((n, SIDE, SIDE), dtype=np.float64)
    canvas = np.empty((_CANVAS, _CANVAS), dtype=np.uint8)
    per_face = zip(codes.tolist(), centre.tolist(), scale.tolist(), background.tolist(), skin.tolist(),
                   ink.tolist(), strength.tolist(), side.tolist(), blur_sigma.tolist())
    for i, (code, (cx, cy), s, gray, tone, dark, k, corner, sigma) in enumerate(per_face):
        canvas.fill(gray)
        _draw_face(canvas, expression_of_code[code], cx, cy, s, tone, dark, k, corner)
        blurred = cv2.GaussianBlur(canvas, (0, 0), sigma)
        faces[i] = cv2.resize(blurred, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    images = np.clip(np.rint(faces + noise), 0, 255).astype(np.uint8)
    return images, codes


def write_demo_csv(path: str | Path, per_class: int = 40, seed: int = 0, test_share: float = 0.2) -> Path:
    """Write ``draw_demo_faces(per_class, seed)`` as a ``fer2013.csv`` at ``path`` and return the path.

    The header is ``emotion,pixels,Usage``; each row is one face, its pixels 2304 space-separated
    integers (row-major 48x48). Within each class, ``round(test_share * per_class)`` faces are test
    faces, split evenly between ``PublicTest`` (which takes the odd one, if any) and ``PrivateTest``:
    the class's first faces in drawing order are ``PublicTest``, the next ``PrivateTest``, the rest
    ``Training`` (faces are drawn independently, so this is a random split). The rows are then
    shuffled: row ``i`` holds face ``order[i]`` of ``draw_demo_faces``, with
    ``order = np.random.default_rng(seed).permutation(7 * per_class)``. The file is written under a
    temporary name in the same folder and renamed into place, so no reader sees half a file.
    """
    if not 0.0 <= test_share <= 1.0:
        raise OptionError(f"test_share must be between 0 and 1, got {test_share}")
    target = Path(path).expanduser()
    images, codes = draw_demo_faces(per_class, seed)
    n_test = round(test_share * per_class)
    n_public = n_test - n_test // 2
    index_in_class = np.arange(codes.size) % per_class  # faces come grouped by class
    usage = np.where(index_in_class < n_public, "PublicTest",
                     np.where(index_in_class < n_test, "PrivateTest", "Training"))
    order = np.random.default_rng(seed).permutation(codes.size)
    pixel_strings = [" ".join(map(str, image.ravel().tolist())) for image in images[order]]

    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name per writer (so concurrent writers never share one), created with the usual
    # permissions rather than mkstemp's owner-only ones: the CSV is meant to be looked at.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", newline="", encoding="ascii") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(_CSV_HEADER)
            writer.writerows(zip(codes[order].tolist(), pixel_strings, usage[order].tolist()))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def open_demo(folder: str | Path, per_class: int = 40, seed: int = 0) -> Fer2013Csv:
    """Write the demo faces as ``folder/fer2013-demo.csv`` and return the real fer2013.csv reader
    for it, naming its rows' source ``demo`` (so they never mix with real FER2013 ids)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SourceError(f"{folder} is a file: the demo writes its faces into a folder",
                          "give a folder, or no path for the workspace's demo-data/")
    path = write_demo_csv(folder / "fer2013-demo.csv", per_class=per_class, seed=seed)
    return Fer2013Csv(path, dataset="demo")
