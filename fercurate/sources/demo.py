"""The embedded demo (source ``demo``): procedurally drawn cartoon faces, written as a ``fer2013.csv``,
with one of each problem the audit finds planted in it on purpose.

A newcomer without FER2013 (or any other dataset) still needs to see fercurate work end to end.
This module draws small labelled gray faces (48x48 uint8, like FER2013), one simple expression
per emotion, and writes them in FER2013's own CSV layout, so the demo goes through the real
``fer2013.csv`` reader (``Fer2013Csv(path, dataset="demo")``) rather than a special path.

Faces are drawn with OpenCV at 4x resolution (192x192) and shrunk with ``cv2.INTER_AREA`` so
edges come out anti-aliased. Every face gets its own looks (:class:`_Look`): head shape (width,
height, squareness, a narrower chin), size, position and a slight tilt, ears, hair, skin and
feature tones, a mottled and graded background, a light coming from one side, expression
strength, eye spacing, mouth and brow width, blur and noise. The variety is what keeps
different faces apart for the audit's 64-bit perceptual hash: :func:`draw_demo_faces` redraws
the rare face whose hash lies within :data:`MIN_HASH_DISTANCE` bits of an earlier face's, so no
two faces of the demo are near duplicates (the audit calls faces within 4 bits near duplicates).
The expressions are exaggerated on purpose: each class must be recognisable to a person looking
at a contact sheet and separable by a quick classifier on HOG features (the audit's label-noise
model), and every face is drawn so that dlib's HOG face detector (the audit's face check) finds
it. ``tests/test_demo.py`` checks all three on the default demo.

Planted problems (``plant``): :func:`write_demo_csv` can plant one case of every problem the
audit finds into the rows it writes, keeping the rows' count, splits and per-split class counts:
an exact copy across splits, a re-encoded near copy across splits, an exact copy with another
label, three flipped labels, a blank image and a non-face (a drawn landscape). What was planted
where is known by construction and written beside the CSV (``<csv stem>.planted.json``, read by
:func:`read_planted`); :mod:`fercurate.audit.planted` compares it with what an audit found.
:func:`open_demo` plants them into demos of the default size (:data:`PLANT_FROM` faces per class).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np

from fercurate.atomic import atomic_path
from fercurate.errors import OptionError, SourceError
from fercurate.phash import hamming_distances, image_hashes
from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.fer2013 import SIDE, Fer2013Csv

#: Canonical emotion -> FER2013 emotion code (anger 0, disgust 1, fear 2, happiness 3, sadness 4,
#: surprise 5, neutral 6), taken from the one FER2013 label table in ``fercurate.schema``.
DEMO_EMOTION_CODES: dict[str, int] = {label: int(code) for code, label in SOURCE_LABEL_MAPS["fer2013"].items()}
_LABEL_OF_CODE = {code: label for label, code in DEMO_EMOTION_CODES.items()}

#: Every two faces of one draw differ in at least this many of their 64 perceptual-hash bits (the
#: audit's near-duplicate distance is 4; one bit more is margin for rounding).
MIN_HASH_DISTANCE = 6
#: The smallest demo (faces per class) that :func:`open_demo` plants problems into by default: the
#: default demo's size, where the audit is checked to find them (the label-noise check needs enough
#: faces per class to learn the expressions); smaller demos, drawn as test fixtures, stay clean.
PLANT_FROM = 40
#: What :func:`write_demo_csv` plants, in the order it is recorded.
PLANTED_KINDS = ("exact_copy_across_splits", "near_copy_across_splits", "copy_with_other_label",
                 "flipped_labels", "blank_image", "non_face")
PLANTED_SUFFIX = ".planted.json"

_SCALE = 4  # faces are drawn at SIDE * _SCALE and shrunk, for anti-aliased shapes
_CANVAS = SIDE * _SCALE
_CSV_HEADER = ("emotion", "pixels", "Usage")
_BLANK_GRAY = 128
#: The expressions whose faces get each other's labels (flipped labels), far apart for the label-noise
#: model (see plant_problems).
_FLIP_CYCLE = ("happiness", "surprise", "sadness")
_JPEG_QUALITIES = (75, 85, 65, 90, 55)  # tried in turn for the near copy (see _near_copy)
_MIN_SHARPNESS = 150.0  # Laplacian variance the near copy keeps (the audit calls < 100 blurry)

_Mouth = Literal["line", "tight", "smile", "frown", "open", "stretch", "sneer"]


class _Expression(NamedTuple):
    """How one emotion shapes the face, in canvas pixels at head scale 1 (negative dy = up)."""

    brow_inner_dy: float  # inner brow ends: + lowers them (anger), - raises them (sadness, fear)
    brow_outer_dy: float
    eye_open: float  # half-height of the eye opening; 0 draws closed, smiling eyes (upward arcs)
    mouth: _Mouth
    nose_wrinkles: bool


# Brows move less than a cartoonist would move them: steep or high brows make dlib's face detector
# (the audit's face check) miss faces, as do a tall round "o" mouth and slit eyes.
_EXPRESSIONS: dict[str, _Expression] = {
    "anger": _Expression(10, -5, 6, "tight", False),
    "disgust": _Expression(5, 4, 6, "sneer", True),
    "fear": _Expression(-8, -2, 12, "stretch", False),
    "happiness": _Expression(-2, -2, 0, "smile", False),
    "sadness": _Expression(-6, 5, 7, "frown", False),
    "surprise": _Expression(-10, -10, 13, "open", False),
    "neutral": _Expression(0, 0, 8, "line", False),
}


class _Look(NamedTuple):
    """One face's looks: canvas pixels and gray levels (0..255) unless said otherwise."""

    cx: float  # head centre
    cy: float
    scale: float  # head size
    width: float  # head half-width and half-height factors (of 66 and 82 canvas pixels)
    height: float
    squareness: float  # superellipse exponent of the head outline: 2 an ellipse, 3 squarer
    taper: float  # how much narrower the head gets towards the chin
    tilt: float  # degrees
    background: int
    backdrop: int  # gray levels the background grows by from top to bottom
    skin: int
    ink: int  # brows, pupils, mouth
    hair: int  # gray of the hair behind the head; -1 bald
    hair_rise: float  # how far the hair outline sits above the head's
    ears: bool
    eye_gap: float  # eye centre distance from the midline
    mouth_width: float
    brow_width: float
    strength: float  # how far brows and mouth move
    side: int  # which corner a one-sided sneer lifts (+1 or -1)
    light: float  # gray levels of light falling off across the image
    light_angle: float  # radians: the direction the light comes from
    blur: float  # Gaussian sigma, canvas pixels
    noise: float  # sigma of per-pixel Gaussian noise, after shrinking


def _random_look(rng: np.random.Generator) -> _Look:
    """Draw one face's looks (in this order: :func:`draw_demo_faces` depends only on the seed)."""
    skin = int(rng.integers(140, 211))
    backdrop = int(rng.integers(-25, 26))
    # The background stays at least 50 gray levels darker than the skin everywhere (see _render):
    # a face as light as its background loses its outline, and dlib the face.
    background = min(int(rng.integers(35, 121)), skin - 50 - max(0, backdrop))
    return _Look(
        cx=_CANVAS / 2 + rng.uniform(-1.5, 1.5) * _SCALE,
        cy=_CANVAS / 2 + 4 + rng.uniform(-1.25, 1.25) * _SCALE,  # a little low: room for raised brows
        scale=rng.uniform(0.97, 1.03),
        width=rng.uniform(0.9, 1.0),
        height=rng.uniform(0.96, 1.04),
        squareness=rng.uniform(2.0, 3.0),
        taper=rng.uniform(0.0, 0.12),
        tilt=rng.uniform(-3, 3),
        background=background,
        backdrop=backdrop,
        skin=skin,
        ink=int(rng.integers(10, 61)),
        hair=-1 if rng.random() < 0.25 else int(rng.integers(15, 111)),
        hair_rise=rng.uniform(12, 17),
        ears=bool(rng.random() < 0.6),
        eye_gap=rng.uniform(25, 29),
        mouth_width=rng.uniform(0.85, 1.15),
        brow_width=rng.uniform(7, 11),
        strength=rng.uniform(0.8, 1.1),
        side=int(rng.choice([-1, 1])),
        light=rng.uniform(0, 40),
        light_angle=rng.uniform(0, 2 * np.pi),
        blur=rng.uniform(0.4, 0.8) * _SCALE,  # 0.4..0.8 output pixels
        noise=rng.uniform(2.5, 5.0),
    )


def _clear_look(rng: np.random.Generator) -> _Look:
    """A random look made plain to read: the expression at full strength, the head centred, upright
    and of middle size, dark features on light skin, little blur and noise, soft light."""
    look = _random_look(rng)
    skin = max(look.skin, 175)
    return look._replace(cx=_CANVAS / 2, cy=_CANVAS / 2 + 4, scale=1.0, tilt=0.0, strength=1.1, skin=skin,
                         background=min(look.background, skin - 50 - max(0, look.backdrop)), ink=min(look.ink, 30),
                         light=min(look.light, 15.0), blur=0.5 * _SCALE, noise=2.5)


def _pt(x: float, y: float) -> tuple[int, int]:
    """A canvas point, rounded to the integer pixel OpenCV wants."""
    return round(x), round(y)


def _head_outline(cx: float, cy: float, half_width: float, half_height: float, squareness: float,
                  taper: float) -> np.ndarray:
    """The head's outline as polygon points: a superellipse, narrower towards the chin."""
    angle = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    cos, sin = np.cos(angle), np.sin(angle)
    y = np.sign(sin) * np.abs(sin) ** (2 / squareness)
    x = np.sign(cos) * np.abs(cos) ** (2 / squareness) * (1 - taper * np.clip(y, 0, None))
    return np.stack([cx + half_width * x, cy + half_height * y], axis=1)


def _draw_mouth(canvas: np.ndarray, kind: _Mouth, cx: float, my: float, s: float, k: float, look: _Look,
                teeth: int) -> None:
    """Draw the mouth shape ``kind`` centred at (cx, my); ``k`` scales how strong it is."""
    ink = look.ink
    w = 24 * s * look.mouth_width  # half-width of a relaxed mouth
    thick = round(10 * s)
    if kind == "line":
        cv2.line(canvas, _pt(cx - w, my), _pt(cx + w, my), ink, thick, cv2.LINE_AA)
    elif kind == "tight":  # short and pressed
        y = my + 2 * s
        cv2.line(canvas, _pt(cx - 0.65 * w, y), _pt(cx + 0.65 * w, y), ink, thick + 4, cv2.LINE_AA)
    elif kind == "smile":  # lower half of an ellipse: corners up
        cv2.ellipse(canvas, _pt(cx, my - 14 * s * k), _pt(w + 8 * s, 22 * s * k), 0, 0, 180, ink, thick,
                    cv2.LINE_AA)
    elif kind == "frown":  # upper half of a flat ellipse: corners down
        cv2.ellipse(canvas, _pt(cx, my + 10 * s * k), _pt(w, 13 * s * k), 0, 180, 360, ink, thick, cv2.LINE_AA)
    elif kind == "open":  # dropped jaw: a wide ring of lips
        cv2.ellipse(canvas, _pt(cx, my + 2 * s), _pt(20 * s * k, 13 * s * k), 0, 0, 360, ink, round(8 * s),
                    cv2.LINE_AA)
    elif kind == "stretch":  # wide open, pulled sideways, the upper teeth showing
        height = 14 * s * k
        cv2.ellipse(canvas, _pt(cx, my + 2 * s), _pt(w + 8 * s, height), 0, 0, 360, ink, -1, cv2.LINE_AA)
        teeth_y = my + 2 * s - height + 5 * s
        cv2.line(canvas, _pt(cx - 0.8 * w, teeth_y), _pt(cx + 0.8 * w, teeth_y), teeth, round(5 * s), cv2.LINE_AA)
    else:  # sneer: flat on one side, upper lip raised on the other
        corners = [(-w, 5 * s), (-0.3 * w, 2 * s), (0.3 * w, -2 * s * k), (0.7 * w, -10 * s * k), (w, -6 * s * k)]
        points = np.array([_pt(cx + look.side * dx, my + dy) for dx, dy in corners], dtype=np.int32)
        cv2.polylines(canvas, [points], False, ink, thick, cv2.LINE_AA)


def _draw_face(canvas: np.ndarray, expression: _Expression, look: _Look) -> None:
    """Draw one face on ``canvas`` (already the background): ears, hair, head, then features."""
    cx, cy, s, k, skin, ink = look.cx, look.cy, look.scale, look.strength, look.skin, look.ink
    half_width, half_height = 66 * s * look.width, 82 * s * look.height
    if look.ears:
        for sign in (-1, 1):
            cv2.ellipse(canvas, _pt(cx + sign * half_width * 0.97, cy - 8 * s), _pt(10 * s, 18 * s), 0, 0, 360,
                        max(0, skin - 20), -1, cv2.LINE_AA)
    if look.hair >= 0:  # behind the head: a larger outline, raised, down to the ears
        hair = _head_outline(cx, cy - look.hair_rise * s, half_width * 1.1, half_height * 1.04, look.squareness,
                             look.taper)
        hair = hair[hair[:, 1] < cy + 10 * s]
        cv2.fillPoly(canvas, [np.round(hair).astype(np.int32)], look.hair, cv2.LINE_AA)
    head = _head_outline(cx, cy, half_width, half_height, look.squareness, look.taper)
    cv2.fillPoly(canvas, [np.round(head).astype(np.int32)], skin, cv2.LINE_AA)

    eye_y, brow_y, mouth_y = cy - 12 * s, cy - 32 * s, cy + 44 * s
    sclera = min(255, skin + 45)
    line = round(3 * s)  # thin strokes: nose, wrinkles
    for sign in (-1, 1):  # left, then right half of the face
        eye_x = cx + sign * look.eye_gap * s
        if expression.eye_open:  # white with a dark pupil, the pupil cut by narrow lids
            opening = expression.eye_open * s
            cv2.ellipse(canvas, _pt(eye_x, eye_y), _pt(13 * s, opening), 0, 0, 360, sclera, -1, cv2.LINE_AA)
            cv2.ellipse(canvas, _pt(eye_x, eye_y), _pt(6 * s, min(6 * s, opening)), 0, 0, 360, ink, -1,
                        cv2.LINE_AA)
        else:  # closed in a smile: the upper half of an ellipse
            cv2.ellipse(canvas, _pt(eye_x, eye_y + 4 * s), _pt(12 * s, 9 * s), 0, 180, 360, ink, round(6 * s),
                        cv2.LINE_AA)
        inner = _pt(cx + sign * (look.eye_gap - 16) * s, brow_y + expression.brow_inner_dy * s * k)
        outer = _pt(cx + sign * (look.eye_gap + 16) * s, brow_y + expression.brow_outer_dy * s * k)
        cv2.line(canvas, inner, outer, ink, round(look.brow_width * s), cv2.LINE_AA)
    nose = max(0, skin - 55)
    cv2.line(canvas, _pt(cx, cy - 4 * s), _pt(cx - 5 * s, cy + 18 * s), nose, line, cv2.LINE_AA)
    cv2.line(canvas, _pt(cx - 5 * s, cy + 18 * s), _pt(cx + 5 * s, cy + 19 * s), nose, line, cv2.LINE_AA)
    if expression.nose_wrinkles:  # creases slanting down either side of the bridge of the nose
        for sign in (-1, 1):
            cv2.line(canvas, _pt(cx + sign * 5 * s, cy - 6 * s), _pt(cx + sign * 15 * s, cy + 4 * s), ink, line,
                     cv2.LINE_AA)
    _draw_mouth(canvas, expression.mouth, cx, mouth_y, s, k, look, sclera)


_ROWS = np.arange(_CANVAS, dtype=np.float32)[:, None]
_OUTPUT_GRID = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1) - 0.5  # (y, x) from -0.5 to 0.5


def _finish(canvas: np.ndarray, blur: float, noise: float, light: float, light_angle: float,
            rng: np.random.Generator) -> np.ndarray:
    """Blur the canvas, shrink it to 48x48, light it from one side and add noise: uint8."""
    blurred = cv2.GaussianBlur(canvas, (0, 0), blur)
    image = cv2.resize(blurred, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float64)
    y, x = _OUTPUT_GRID
    image += light * (np.cos(light_angle) * x + np.sin(light_angle) * y)
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render(expression: _Expression, look: _Look, rng: np.random.Generator) -> np.ndarray:
    """One 48x48 face."""
    # The background: a vertical ramp plus a mottle (a 4x4 grid of random grays, smoothly
    # enlarged), kept 50 gray levels below the skin.
    mottle = cv2.resize(rng.normal(0, 15, size=(4, 4)).astype(np.float32), (_CANVAS, _CANVAS),
                        interpolation=cv2.INTER_CUBIC)
    field = np.minimum(look.background + look.backdrop * _ROWS / _CANVAS + mottle, look.skin - 50)
    canvas = np.clip(field, 0, 255).astype(np.uint8)
    _draw_face(canvas, expression, look)
    turn = cv2.getRotationMatrix2D((look.cx, look.cy), look.tilt, 1.0)
    canvas = cv2.warpAffine(canvas, turn, (_CANVAS, _CANVAS), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    return _finish(canvas, look.blur, look.noise, look.light, look.light_angle, rng)


def draw_demo_faces(per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` faces for each of FER2013's seven emotions.

    Returns ``(images, codes)``: ``images`` is uint8 ``(N, 48, 48)`` and ``codes`` int64 ``(N,)``
    FER2013 emotion codes, ``N = 7 * per_class``, grouped by code in ascending order (all code-0
    faces, then all code-1 faces, ...). The same ``seed`` always gives the same arrays: faces are
    drawn one after another from one random stream, and a face whose perceptual hash lies within
    :data:`MIN_HASH_DISTANCE` bits of an earlier face's is drawn again (a few in a hundred are).
    """
    images, codes, _ = _draw_faces(per_class, seed)
    return images, codes


def _draw_faces(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[_Look]]:
    """:func:`draw_demo_faces`, with each face's looks."""
    if per_class < 1:
        raise OptionError(f"per_class must be at least 1, got {per_class}")
    codes = np.repeat(np.arange(len(DEMO_EMOTION_CODES), dtype=np.int64), per_class)
    rng = np.random.default_rng(seed)
    images = np.empty((codes.size, SIDE, SIDE), dtype=np.uint8)
    hashes = np.empty(codes.size, dtype=np.uint64)
    looks = []
    for i, code in enumerate(codes.tolist()):
        expression = _EXPRESSIONS[_LABEL_OF_CODE[code]]
        while True:
            look = _random_look(rng)
            image = _render(expression, look, rng)
            image_hash = image_hashes(image[None])
            if i == 0 or hamming_distances(image_hash, hashes[:i]).min() >= MIN_HASH_DISTANCE:
                break
        images[i], hashes[i] = image, image_hash[0]
        looks.append(look)
    return images, codes, looks


def draw_landscape(seed: int = 0) -> np.ndarray:
    """A 48x48 gray landscape drawn like the faces (sky, sun, hills, a house): the demo's non-face."""
    rng = np.random.default_rng(seed)
    canvas = np.empty((_CANVAS, _CANVAS), dtype=np.uint8)
    horizon = int(_CANVAS * rng.uniform(0.5, 0.6))
    canvas[:horizon] = np.linspace(215, 160, horizon, dtype=np.float32)[:, None].astype(np.uint8)  # sky
    canvas[horizon:] = 70  # fields
    sun = _pt(rng.uniform(0.2, 0.8) * _CANVAS, rng.uniform(0.12, 0.25) * _CANVAS)
    cv2.circle(canvas, sun, round(0.08 * _CANVAS), 245, -1, cv2.LINE_AA)
    ridge_x = np.linspace(-8, _CANVAS + 8, 9)
    ridge_y = horizon - rng.uniform(0.05, 0.3, size=ridge_x.size) * _CANVAS
    hills = np.concatenate([np.stack([ridge_x, ridge_y], 1), [[_CANVAS + 8, horizon + 2], [-8, horizon + 2]]])
    cv2.fillPoly(canvas, [np.round(hills).astype(np.int32)], 105, cv2.LINE_AA)
    for row in range(horizon + 12, _CANVAS, 20):  # furrows
        cv2.line(canvas, (0, row), (_CANVAS, row + 6), 45, 4, cv2.LINE_AA)
    left, base = round(rng.uniform(0.15, 0.55) * _CANVAS), horizon + 20  # a house: walls, roof, door
    cv2.rectangle(canvas, (left, base - 44), (left + 60, base), 185, -1, cv2.LINE_AA)
    roof = np.array([(left - 8, base - 44), (left + 30, base - 74), (left + 68, base - 44)], dtype=np.int32)
    cv2.fillPoly(canvas, [roof], 35, cv2.LINE_AA)
    cv2.rectangle(canvas, (left + 24, base - 26), (left + 36, base), 40, -1, cv2.LINE_AA)
    return _finish(canvas, 0.6 * _SCALE, 4.0, 0.0, 0.0, rng)


@dataclass(frozen=True)
class PlantedProblem:
    """One planted problem: the rows it involves, what each row shows and the label it is given."""

    kind: str  # one of PLANTED_KINDS
    ids: tuple[str, ...]  # the row ids (copies: the original first, then the copy)
    shows: tuple[str, ...]  # per row: the emotion drawn, "blank" or "landscape"
    labels: tuple[str, ...]  # per row: the label written in the CSV
    what: str  # one sentence


@dataclass(frozen=True)
class PlantedDemo:
    """What :func:`write_demo_csv` planted into one demo CSV (the ``.planted.json`` beside it)."""

    csv: str  # the CSV's file name
    csv_sha1: str  # of the CSV's bytes: a record belongs to exactly one CSV
    dataset: str  # the source name its rows are ingested under (their ids start with it)
    per_class: int
    seed: int
    rows: int
    problems: tuple[PlantedProblem, ...]

    def ids(self, kind: str | None = None) -> list[str]:
        """Every planted row id (of one kind), in recorded order."""
        return [row_id for problem in self.problems if kind in (None, problem.kind) for row_id in problem.ids]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PlantedDemo:
        values = json.loads(text)
        problems = tuple(PlantedProblem(**{key: tuple(value) if isinstance(value, list) else value
                                           for key, value in problem.items()}) for problem in values.pop("problems"))
        return cls(**values, problems=problems)


def planted_path(csv_path: str | Path) -> Path:
    """Where :func:`write_demo_csv` records what it planted into ``csv_path``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + PLANTED_SUFFIX)


def read_planted(csv_path: str | Path) -> PlantedDemo | None:
    """What was planted into the demo CSV at ``csv_path``; None when nothing was (no record, or the
    CSV has been rewritten since the record was made)."""
    csv_path = Path(csv_path)
    record = planted_path(csv_path)
    if not record.is_file() or not csv_path.is_file():
        return None
    try:
        planted = PlantedDemo.from_json(record.read_text())
    except (ValueError, TypeError, KeyError) as error:
        raise SourceError(f"{record} is not a record of planted problems ({error})",
                          "remove it, or write the demo again") from None
    return planted if planted.csv_sha1 == _file_sha1(csv_path) else None


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _shifted(image: np.ndarray, dx: float) -> np.ndarray:
    """``image`` moved ``dx`` pixels to the right (edges repeated)."""
    if not dx:
        return image
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, 0]]), (SIDE, SIDE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _near_copy(original: np.ndarray, other_hashes: np.ndarray) -> np.ndarray | None:
    """``original`` saved again as a JPEG (cropped half a pixel over if need be) so that its hash
    lies 1 to 4 bits from the original's and more than 4 from every hash in ``other_hashes``,
    still sharp (the audit then finds a near duplicate and nothing else); None if no such copy."""
    original_hash = image_hashes(original[None])
    for dx in (0.0, 0.5):
        for quality in _JPEG_QUALITIES:
            copy = cv2.imdecode(cv2.imencode(".jpg", _shifted(original, dx), [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                cv2.IMREAD_GRAYSCALE)
            copy_hash = image_hashes(copy[None])
            if (1 <= hamming_distances(copy_hash, original_hash).min() <= 4
                    and hamming_distances(copy_hash, other_hashes).min() > 4
                    and cv2.Laplacian(copy, cv2.CV_32F).var() >= _MIN_SHARPNESS):
                return copy
    return None


def plant_problems(images: np.ndarray, codes: np.ndarray, usage: np.ndarray, seed: int = 0,
                   dataset: str = "demo") -> tuple[np.ndarray, np.ndarray, list[PlantedProblem]]:
    """Plant one case of each of :data:`PLANTED_KINDS` into CSV rows (``images``, emotion ``codes``,
    ``usage`` per row, in file order) and return the new images and codes and what was planted.

    Rows are picked at random (``seed``) from the rows no other problem uses. Only pixels and labels
    change, and labels only in a cycle, so every split keeps its class counts. Flipped labels: one
    Training face each of happiness, surprise and sadness (:data:`_FLIP_CYCLE`: expressions far
    apart) is drawn anew, plain to read (:func:`_clear_look`), and labelled with the next one's
    emotion. A wrong label on a face drawn at random is a judgement call for the audit's model (it
    misses one now and then), and a clear face given the label of a nearby expression pulls that
    expression's faces along (the model flags some of them too); clear faces of three expressions
    far apart are found, and found alone (checked on 60 seeds). The other problems use
    the other four classes, in random order: a Training face copied into a PrivateTest row of its
    class (exact copy across splits); one re-encoded into a PublicTest row of its class (near copy
    across splits: the first Training face, in random order, whose re-encoding hashes near it and
    near nothing else); one copied into a Training row of another class, which keeps its label (a
    copy with another label: the copy's label is wrong); a PublicTest row made a constant gray
    image and a Training row a landscape. Needs 2 test faces and 3 training faces per class.
    Afterwards the planted copies are checked to be the only rows within 4 hash bits of another.
    """
    rng = np.random.default_rng([seed, 1])
    images, given = images.copy(), codes.copy()
    used: set[int] = set()

    def free(split: str, code: int) -> list[int]:
        rows = [row for row in np.flatnonzero((usage == split) & (codes == code)).tolist() if row not in used]
        if not rows:
            raise OptionError(f"the demo has too few {split} faces of {_LABEL_OF_CODE[code]} to plant problems in",
                              "draw more faces per class (10 or more)")
        return [rows[i] for i in rng.permutation(len(rows)).tolist()]

    def pick(split: str, code: int) -> int:
        row = free(split, code)[0]
        used.add(row)
        return row

    cycle = [DEMO_EMOTION_CODES[label] for label in _FLIP_CYCLE]
    other = [int(code) for code in rng.permutation(sorted(set(DEMO_EMOTION_CODES.values()) - set(cycle)))]
    leaked = [pick("Training", other[0]), pick("PrivateTest", other[0])]
    near = pick("PublicTest", other[1])
    relabelled = [pick("Training", other[2]), pick("Training", other[3])]
    flipped = [pick("Training", code) for code in cycle]
    blank, non_face = pick("PublicTest", other[3]), pick("Training", other[0])
    shows = {row: _LABEL_OF_CODE[int(codes[row])] for row in used}
    for original, copy in (leaked, relabelled):
        images[copy], shows[copy] = images[original], shows[original]
    given[flipped] = codes[np.roll(flipped, -1)]  # each takes the next one's label
    for row in flipped:  # drawn anew, plain to read: the wrong label is no judgement call
        others = image_hashes(np.delete(images, row, axis=0))
        while True:
            images[row] = _render(_EXPRESSIONS[shows[row]], _clear_look(rng), rng)
            if hamming_distances(image_hashes(images[row][None]), others).min() >= MIN_HASH_DISTANCE:
                break
    images[blank], shows[blank] = _BLANK_GRAY, "blank"
    images[non_face], shows[non_face] = draw_landscape(seed), "landscape"
    hashes = image_hashes(images)
    for original in free("Training", other[1]):
        copy = _near_copy(images[original], np.delete(hashes, [original, near]))
        if copy is not None:
            used.add(original)
            shows[original] = shows[near] = _LABEL_OF_CODE[int(codes[original])]
            images[near] = copy
            break
    else:
        raise SourceError(f"no {_LABEL_OF_CODE[other[1]]} face of the demo makes a near copy that is near "
                          "nothing else", "draw the demo with another seed")
    rows = {"exact_copy_across_splits": leaked, "near_copy_across_splits": [original, near],
            "copy_with_other_label": relabelled, "flipped_labels": flipped, "blank_image": [blank],
            "non_face": [non_face]}
    hashes = image_hashes(images)
    close = np.argwhere(np.triu(hamming_distances(hashes, hashes) <= 4, 1))
    if sorted(map(sorted, close.tolist())) != sorted(sorted(pair) for pair in (leaked, [original, near], relabelled)):
        raise SourceError("the demo's planted problems are not the only near duplicates in it",
                          "draw the demo with another seed")

    def row_id(row: int) -> str:
        return f"{dataset}/{usage[row]}/{row:05d}"  # Fer2013Csv's id for a row of a CSV with Usage

    def describe(kind: str, picked: list[int]) -> str:
        first, last = row_id(picked[0]), row_id(picked[-1])
        if kind == "exact_copy_across_splits":
            return f"{last} holds the same pixels as {first}: a training face leaked into a test split"
        if kind == "near_copy_across_splits":
            return f"{last} is {first} saved again as a JPEG: the same face, other bytes, in a test split"
        if kind == "copy_with_other_label":
            return (f"{last} holds the same pixels as {first} but keeps its own label, "
                    f"{_LABEL_OF_CODE[int(given[picked[-1]])]}: one of the two labels is wrong")
        if kind == "flipped_labels":
            return "each face is labelled with the next one's emotion: " + ", ".join(
                f"{row_id(row)} shows {shows[row]}, labelled {_LABEL_OF_CODE[int(given[row])]}" for row in picked)
        if kind == "blank_image":
            return f"{first} is a constant gray image"
        return f"{first} is a drawn landscape, not a face"

    problems = [PlantedProblem(kind, tuple(row_id(row) for row in picked), tuple(shows[row] for row in picked),
                               tuple(_LABEL_OF_CODE[int(given[row])] for row in picked), describe(kind, picked))
                for kind, picked in rows.items()]
    return images, given, problems


def write_demo_csv(path: str | Path, per_class: int = 40, seed: int = 0, test_share: float = 0.2,
                   plant: bool = False, dataset: str = "demo") -> Path:
    """Write ``draw_demo_faces(per_class, seed)`` as a ``fer2013.csv`` at ``path`` and return the path.

    The header is ``emotion,pixels,Usage``; each row is one face, its pixels 2304 space-separated
    integers (row-major 48x48). Within each class, ``round(test_share * per_class)`` faces are test
    faces, split evenly between ``PublicTest`` (which takes the odd one, if any) and ``PrivateTest``:
    the class's first faces in drawing order are ``PublicTest``, the next ``PrivateTest``, the rest
    ``Training`` (faces are drawn independently, so this is a random split). The rows are then
    shuffled: row ``i`` holds face ``order[i]`` of ``draw_demo_faces``, with
    ``order = np.random.default_rng(seed).permutation(7 * per_class)``.

    With ``plant``, :func:`plant_problems` then plants its problems into the rows, and what it
    planted (ids as the ``fer2013.csv`` reader names rows of source ``dataset``) is written to
    :func:`planted_path` beside the CSV; without, a record left there by an earlier write is
    removed. Files are written under temporary names in the same folder and renamed into place,
    so no reader sees half a file.
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
    images, codes, usage = images[order], codes[order], usage[order]
    problems: list[PlantedProblem] = []
    if plant:
        images, codes, problems = plant_problems(images, codes, usage, seed, dataset)
    pixel_strings = [" ".join(map(str, image.ravel().tolist())) for image in images]

    target.parent.mkdir(parents=True, exist_ok=True)
    record = planted_path(target)
    # A fresh name per writer (so concurrent writers never share one), created with the usual
    # permissions rather than mkstemp's owner-only ones: the CSV is meant to be looked at.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", newline="", encoding="ascii") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(_CSV_HEADER)
            writer.writerows(zip(codes.tolist(), pixel_strings, usage.tolist()))
        if plant:
            planted = PlantedDemo(target.name, _file_sha1(temporary), dataset, per_class, seed, int(codes.size),
                                  tuple(problems))
            with atomic_path(record) as record_temporary:
                Path(record_temporary).write_text(planted.to_json() + "\n")
        else:
            record.unlink(missing_ok=True)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def open_demo(folder: str | Path, per_class: int = 40, seed: int = 0, plant: bool | None = None) -> Fer2013Csv:
    """Write the demo faces as ``folder/fer2013-demo.csv`` and return the real fer2013.csv reader
    for it, naming its rows' source ``demo`` (so they never mix with real FER2013 ids).

    ``plant`` plants one of each problem the audit finds (see :func:`write_demo_csv`); by default
    it does when ``per_class`` is at least :data:`PLANT_FROM` (the default), so the smaller demos
    tests draw as fixtures stay clean."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SourceError(f"{folder} is a file: the demo writes its faces into a folder",
                          "give a folder, or no path for the workspace's demo-data/")
    plant = per_class >= PLANT_FROM if plant is None else plant
    path = write_demo_csv(folder / "fer2013-demo.csv", per_class=per_class, seed=seed, plant=plant)
    return Fer2013Csv(path, dataset="demo")
