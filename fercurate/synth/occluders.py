"""Face-aware occluders as albumentations transforms, and the photometric/geometric preset.

Each occluder is an :class:`albumentations.ImageOnlyTransform` with a pydantic ``InitSchema``, so it
composes in anyone's ``A.Compose`` and is seeded by albumentations' own seeding
(``A.Compose(..., seed=...)`` drives ``self.py_random`` / ``self.random_generator``): the same seed
gives the same pixels. Shapes are drawn procedurally with OpenCV (polygons, ellipses, a random
shade, a little noise texture, a small angle); no image assets.

Placement comes from a :class:`FaceGeometry`, in three tiers (:func:`placement_for` is the one rule):
from 68-point (iBUG/CK+) landmarks when the call passes ``face_landmarks=`` as a ``(68, 2)`` array in
pixels (``"landmarks"``); from dlib's 5 points found on the image by the audit
(:mod:`fercurate.audit.faces`) when it passes a ``(5, 2)`` array (``"detected"``: eyes and nose
measured, mouth, brows, chin and face width estimated from the eye distance with FER2013's average
proportions); else from the canonical geometry of FER2013's roughly aligned crops (the eyes where
:mod:`fercurate.align` puts them, x 0.306 and 0.668, y 0.375 of the side, measured on the full
FER2013; mouth y ~0.79 from STACK.md's 2,000 faces; nose tip placed midway at ~0.58), scaled to the
image (``"canonical"``), which is also where an aligned face has them. The placement used is returned
with the occluder's parameters and recorded in each synthetic row's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from pydantic import Field

from fercurate.align import CANONICAL_EYES, CANONICAL_SIDE


def _eye_share(eye: int) -> tuple[float, float]:
    x, y = CANONICAL_EYES[eye]
    return round(x / CANONICAL_SIDE, 3), round(y / CANONICAL_SIDE, 3)


#: Canonical geometry of FER2013 crops, as fractions of width (x) and height (y); the eyes are the
#: aligned face's (:data:`fercurate.align.CANONICAL_EYES`).
CANONICAL = {"left_eye": _eye_share(0), "right_eye": _eye_share(1), "nose": (0.5, 0.58),
             "mouth": (0.5, 0.79), "brow_y": 0.27, "chin_y": 0.97, "face_x": (0.1, 0.9)}
Placement = Literal["landmarks", "detected", "canonical"]
#: dlib's 5-point layout (``shape_predictor_5_face_landmarks``): the image-right eye's outer and
#: inner corner, the image-left eye's outer and inner corner, the bottom of the nose.
FIVE_POINT_RIGHT_EYE, FIVE_POINT_LEFT_EYE, FIVE_POINT_NOSE = slice(0, 2), slice(2, 4), 4


@dataclass(frozen=True)
class FaceGeometry:
    """Where the parts of one face are, in pixels."""

    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    nose: tuple[float, float]
    mouth: tuple[float, float]
    brow_y: float
    chin_y: float
    face_x: tuple[float, float]
    placement: Placement

    @classmethod
    def canonical(cls, height: int, width: int) -> FaceGeometry:
        def scale(point: tuple[float, float]) -> tuple[float, float]:
            return point[0] * width, point[1] * height
        return cls(scale(CANONICAL["left_eye"]), scale(CANONICAL["right_eye"]), scale(CANONICAL["nose"]),
                   scale(CANONICAL["mouth"]), CANONICAL["brow_y"] * height, CANONICAL["chin_y"] * height,
                   (CANONICAL["face_x"][0] * width, CANONICAL["face_x"][1] * width), "canonical")

    @classmethod
    def from_landmarks(cls, points: np.ndarray) -> FaceGeometry:
        """From the 68-point iBUG layout CK+ ships (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
        mouth 48-67)."""
        points = np.asarray(points, dtype=np.float64).reshape(68, 2)

        def centre(part: slice) -> tuple[float, float]:
            x, y = points[part].mean(axis=0)
            return float(x), float(y)
        return cls(centre(slice(36, 42)), centre(slice(42, 48)), (float(points[33, 0]), float(points[33, 1])),
                   centre(slice(48, 68)), float(points[17:27, 1].mean()), float(points[8, 1]),
                   (float(points[0:17, 0].min()), float(points[0:17, 0].max())), "landmarks")

    @classmethod
    def from_five_points(cls, points: np.ndarray) -> FaceGeometry:
        """From dlib's 5 points (see :data:`FIVE_POINT_RIGHT_EYE`): eye centres are the means of their
        corners and the nose is the nose bottom, as measured; the mouth (below the nose), brows, chin
        and face width are placed from the eye centres at FER2013's average proportions (the
        :data:`CANONICAL` table, in units of the eye distance). Image axes are kept, as with 68
        points: the occluders turn their shapes by the eyes' roll themselves."""
        points = np.asarray(points, dtype=np.float64).reshape(5, 2)
        left = points[FIVE_POINT_LEFT_EYE].mean(axis=0)
        right = points[FIVE_POINT_RIGHT_EYE].mean(axis=0)
        if left[0] > right[0]:  # a mirrored order: keep "left" the image-left eye
            left, right = right, left
        nose = points[FIVE_POINT_NOSE]
        distance = float(np.hypot(*(right - left)))
        eye_y = float(left[1] + right[1]) / 2
        centre_x = float(left[0] + right[0]) / 2
        (lx, ly), (rx, _) = CANONICAL["left_eye"], CANONICAL["right_eye"]
        unit = rx - lx  # canonical eye distance (the crops are square, so x and y fractions compare)

        def below_eyes(y: float) -> float:
            return eye_y + (y - ly) / unit * distance
        mouth_y = max(below_eyes(CANONICAL["mouth"][1]), float(nose[1]) + 0.25 * distance)
        face_left, face_right = CANONICAL["face_x"]
        face_centre = (lx + rx) / 2
        return cls((float(left[0]), float(left[1])), (float(right[0]), float(right[1])),
                   (float(nose[0]), float(nose[1])), (float(nose[0]), mouth_y),
                   below_eyes(CANONICAL["brow_y"]), max(below_eyes(CANONICAL["chin_y"]), mouth_y + 0.3 * distance),
                   (centre_x + (face_left - face_centre) / unit * distance,
                    centre_x + (face_right - face_centre) / unit * distance), "detected")

    @property
    def eye_distance(self) -> float:
        return float(np.hypot(self.right_eye[0] - self.left_eye[0], self.right_eye[1] - self.left_eye[1]))

    @property
    def eye_y(self) -> float:
        return (self.left_eye[1] + self.right_eye[1]) / 2

    @property
    def roll(self) -> float:
        """Head roll in degrees (0 when the eyes are level)."""
        return float(np.degrees(np.arctan2(self.right_eye[1] - self.left_eye[1], self.right_eye[0] - self.left_eye[0])))


def placement_for(landmarks: np.ndarray | None) -> Placement:
    """Which geometry a face's stored points give: ``landmarks`` for 68 points, ``detected`` for 5,
    ``canonical`` for none (or anything else, or points that are not all finite)."""
    if landmarks is None:
        return "canonical"
    points = np.asarray(landmarks, dtype=np.float64)
    if not np.isfinite(points).all():
        return "canonical"
    return {136: "landmarks", 10: "detected"}.get(points.size, "canonical")


def geometry_for(image: np.ndarray, landmarks: np.ndarray | None) -> FaceGeometry:
    """The geometry :func:`placement_for` picks: from 68 points, from 5 points, else canonical."""
    placement = placement_for(landmarks)
    if placement == "landmarks":
        return FaceGeometry.from_landmarks(np.asarray(landmarks))
    if placement == "detected":
        return FaceGeometry.from_five_points(np.asarray(landmarks))
    return FaceGeometry.canonical(*image.shape[:2])


def _rotate(points: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    theta = np.radians(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return (points - centre) @ rotation.T + centre


def _ellipse(centre: tuple[float, float], axes: tuple[float, float], start: int = 0, end: int = 360) -> np.ndarray:
    """Points of an (unrotated) ellipse arc, float, for drawing with sub-pixel precision."""
    angles = np.radians(np.arange(start, end + 1, 10))
    return np.stack([centre[0] + axes[0] * np.cos(angles), centre[1] + axes[1] * np.sin(angles)], axis=1)


class FaceOccluder(A.ImageOnlyTransform):
    """Base of the occluders: samples a shade, an angle and shape jitter, asks the subclass for
    polygons (in pixels) and paints them with the shade plus noise texture."""

    #: the region of the face it covers, for reports and tests
    region: str = ""

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        shade: tuple[int, int] = Field((10, 70), description="gray level range of the occluder")
        angle_limit: float = Field(8.0, ge=0, le=45, description="random tilt, degrees either way")
        texture: float = Field(6.0, ge=0, le=64, description="std of the noise texture, gray levels")
        scale: tuple[float, float] = Field((0.9, 1.1), description="random size factor range")

    def __init__(self, shade: tuple[int, int] = (10, 70), angle_limit: float = 8.0, texture: float = 6.0,
                 scale: tuple[float, float] = (0.9, 1.1), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.shade = shade
        self.angle_limit = angle_limit
        self.texture = texture
        self.scale = scale

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        geometry = geometry_for(image, data.get("face_landmarks"))
        angle = geometry.roll + self.py_random.uniform(-self.angle_limit, self.angle_limit)
        size = self.py_random.uniform(*self.scale)
        polygons = [np.asarray(polygon, np.float64) for polygon in self.shapes(geometry, size)]
        pivot = ((geometry.left_eye[0] + geometry.right_eye[0]) / 2, geometry.nose[1])
        polygons = [_rotate(polygon, pivot, angle) for polygon in polygons]
        noise = self.random_generator.normal(0.0, self.texture, image.shape[:2]).astype(np.float32)
        return {"polygons": polygons, "shade": self.py_random.randint(*self.shade), "noise": noise,
                "placement": geometry.placement}

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        """The polygons to paint (before rotation)."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, polygons: list[np.ndarray], shade: int, noise: np.ndarray,
              **params: Any) -> np.ndarray:
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32) for polygon in polygons], 255,
                     lineType=cv2.LINE_AA, shift=4)
        alpha = (mask.astype(np.float32) / 255.0)
        fill = np.clip(shade + noise, 0, 255)
        if img.ndim == 3:
            alpha, fill = alpha[..., None], fill[..., None]
        return np.clip(img * (1 - alpha) + fill * alpha + 0.5, 0, 255).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("shade", "angle_limit", "texture", "scale")


class Sunglasses(FaceOccluder):
    """Two dark lenses over the eyes and a bridge between them."""

    region = "eyes"

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        radius = 0.3 * geometry.eye_distance * size
        lenses = [_ellipse(eye, (radius * 1.1, radius * 0.85)) for eye in (geometry.left_eye, geometry.right_eye)]
        (lx, ly), (rx, ry) = geometry.left_eye, geometry.right_eye
        bridge = np.array([[lx, ly - radius * 0.3], [rx, ry - radius * 0.3], [rx, ry - radius * 0.1],
                           [lx, ly - radius * 0.1]])
        return [*lenses, bridge]


class EyeBar(FaceOccluder):
    """A black bar across both eyes (the anonymisation bar)."""

    region = "eyes"

    def __init__(self, shade: tuple[int, int] = (0, 30), **kwargs: Any) -> None:
        super().__init__(shade=shade, **kwargs)

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        half_height = 0.25 * geometry.eye_distance * size
        left, right = geometry.left_eye[0] - 0.5 * geometry.eye_distance, geometry.right_eye[0] + 0.5 * geometry.eye_distance
        y = geometry.eye_y
        return [np.array([[left, y - half_height], [right, y - half_height], [right, y + half_height],
                          [left, y + half_height]])]


class MedicalMask(FaceOccluder):
    """A surgical mask from the nose bridge to the chin, with a rounded lower edge."""

    region = "nose-mouth"

    def __init__(self, shade: tuple[int, int] = (150, 235), **kwargs: Any) -> None:
        super().__init__(shade=shade, **kwargs)

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        top = geometry.eye_y + 0.45 * (geometry.nose[1] - geometry.eye_y)
        left, right = geometry.face_x
        centre_x = (left + right) / 2
        half = (right - left) / 2 * size
        bottom = min(geometry.chin_y, geometry.mouth[1] + 1.2 * (geometry.mouth[1] - geometry.nose[1]))
        arc = _ellipse((centre_x, top + 0.4 * (bottom - top)), (half, 0.6 * (bottom - top)), 0, 180)
        return [np.vstack([[[centre_x - half, top], [centre_x, top - 0.04 * half], [centre_x + half, top]], arc])]


class Hand(FaceOccluder):
    """A hand (palm and four fingers) over one side of the lower face or one eye."""

    region = "face"

    def __init__(self, shade: tuple[int, int] = (120, 210), **kwargs: Any) -> None:
        super().__init__(shade=shade, **kwargs)

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        side = self.py_random.choice((-1, 1))
        target = self.py_random.choice((geometry.left_eye if side < 0 else geometry.right_eye, geometry.mouth))
        unit = geometry.eye_distance * size
        centre = (target[0] + side * 0.15 * unit, target[1] + 0.25 * unit)
        palm = _ellipse(centre, (0.45 * unit, 0.4 * unit))
        fingers = [_ellipse((centre[0] + (i - 1.5) * 0.22 * unit, centre[1] - 0.55 * unit), (0.1 * unit, 0.3 * unit))
                   for i in range(4)]
        return [palm, *fingers]


class Cap(FaceOccluder):
    """A cap over the forehead (crown and brim), or a hair fringe with a jagged lower edge."""

    region = "forehead"

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        left, right = geometry.face_x
        edge = geometry.brow_y - 0.05 * geometry.eye_distance + 0.1 * geometry.eye_distance * (size - 1)
        if self.py_random.random() < 0.5:  # cap: crown above the brim
            crown = np.array([[left - 2, -2], [right + 2, -2], [right + 2, edge], [left - 2, edge]])
            brim = _ellipse(((left + right) / 2, edge), ((right - left) * 0.6, 0.12 * geometry.eye_distance))
            return [crown, brim]
        teeth = 7
        xs = np.linspace(left - 2, right + 2, 2 * teeth + 1)
        ys = np.where(np.arange(len(xs)) % 2 == 0, edge, edge - 0.25 * geometry.eye_distance)
        return [np.vstack([[[left - 2, -2], [right + 2, -2]], np.stack([xs, ys], axis=1)[::-1]])]


class Scarf(FaceOccluder):
    """A scarf wrapped over the chin up to below the mouth."""

    region = "chin"

    def __init__(self, shade: tuple[int, int] = (40, 200), **kwargs: Any) -> None:
        super().__init__(shade=shade, **kwargs)

    def shapes(self, geometry: FaceGeometry, size: float) -> list[np.ndarray]:
        left, right = geometry.face_x
        top = geometry.mouth[1] + 0.1 * (geometry.chin_y - geometry.mouth[1]) / size
        bottom = geometry.chin_y + 0.6 * geometry.eye_distance
        sag = 0.1 * geometry.eye_distance
        return [np.array([[left - 3, top], [(left + right) / 2, top + sag], [right + 3, top],
                          [right + 3, bottom], [left - 3, bottom]])]


#: Occluders by the name the CLI and recipes use.
OCCLUDERS: dict[str, type[FaceOccluder]] = {
    "sunglasses": Sunglasses, "eyebar": EyeBar, "mask": MedicalMask, "hand": Hand, "cap": Cap, "scarf": Scarf,
}


def photometric_preset(strength: Literal["light", "default"] = "default") -> list[A.BasicTransform]:
    """The photometric and geometric augmentations FER work uses, straight from albumentations."""
    p = 0.5 if strength == "default" else 0.3
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), rotate=(-8, 8), border_mode=cv2.BORDER_REFLECT_101,
                 p=p),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=p),
        A.RandomGamma(gamma_limit=(80, 120), p=p / 2),
        A.GaussianBlur(blur_limit=(3, 3), p=p / 4),
        A.GaussNoise(std_range=(0.01, 0.04), p=p / 2),
        A.ImageCompression(quality_range=(60, 95), p=p / 2),
        A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.08, 0.15), hole_width_range=(0.08, 0.15),
                        p=p / 4),
    ]


def occlusion_pipeline(occluder: str, *, seed: int, strength: Literal["light", "default"] = "default",
                       **occluder_options: Any) -> A.Compose:
    """One occluder after the photometric preset (geometry first, so the occluder stays face-aligned
    while the face itself may have moved by the small affine: placement is approximate by design)."""
    return A.Compose([*photometric_preset(strength), OCCLUDERS[occluder](**occluder_options)], seed=seed)
