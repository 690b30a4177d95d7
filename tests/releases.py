"""Tiny copies of every release fercurate reads, in the layouts users download, drawn from the demo faces.

Each builder writes one release into a folder and returns the path a user would pass to
``fercurate ingest``. The faces are the embedded demo's drawn expressions (so a model can learn
them in a few steps), resized and re-encoded the way each release stores them: FER2013's CSV and
its JPEG image-folder archive, FER+'s vote table, CK+'s original sequences with Emotion, FACS and
Landmarks files, CK+48's class folders, JAFFE's TIFFs named subject.expression.number, a plain
image folder, and a hub dataset saved as parquet. Every builder is deterministic in its seed.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fercurate.schema import SOURCE_LABEL_MAPS
from fercurate.sources.demo import draw_demo_faces, write_demo_csv
from fercurate.sources.fer2013_release import USAGES, ReleaseTable, phash64
from fercurate.sources.ferplus import VOTE_COLUMNS

FER2013_LABELS = SOURCE_LABEL_MAPS["fer2013"]  # code -> canonical
CKPLUS_CODES = {label: code for code, label in SOURCE_LABEL_MAPS["ckplus"].items()}
CK48_FOLDERS = {label: folder for folder, label in SOURCE_LABEL_MAPS["ckplus48"].items()}
JAFFE_CODES = {label: code for code, label in SOURCE_LABEL_MAPS["jaffe"].items()}
FOLDER_NAMES = {label: folder for folder, label in SOURCE_LABEL_MAPS["fer2013-folder"].items()}


def demo_faces(per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``per_class`` drawn 48x48 faces of each FER2013 emotion and their canonical labels.

    Each face gets its own smooth lighting field (a random 3x3 grid of -40..40 gray levels,
    upsampled), so that faces of one expression are not perceptual-hash near duplicates of each
    other, as photographs of different people are not."""
    images, codes = draw_demo_faces(per_class, seed)
    grids = np.random.default_rng(seed).uniform(-40, 40, size=(len(images), 3, 3)).astype(np.float32)
    lighting = np.stack([cv2.resize(grid, (48, 48), interpolation=cv2.INTER_CUBIC) for grid in grids])
    lit = np.clip(images + lighting, 0, 255).astype(np.uint8)
    return lit, [FER2013_LABELS[str(code)] for code in codes.tolist()]


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels), path


def fer2013_csv(folder: Path, per_class: int = 8, seed: int = 0) -> Path:
    """``fer2013.csv`` (``emotion,pixels,Usage``) with Training, PublicTest and PrivateTest rows."""
    return write_demo_csv(folder / "fer2013.csv", per_class=per_class, seed=seed, test_share=0.25)


def ferplus_csv(folder: Path, fer2013: Path, seed: int = 0) -> Path:
    """``fer2013new.csv`` for ``fer2013``: row i re-labels row i with ten crowd votes, mostly for
    the FER2013 label; row 0 is mostly not-a-face, row 1 a tie, row 2 has no image name, row 3
    is mostly contempt (a label FER2013 lacks) and row 4 mostly unknown."""
    with open(fer2013, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(seed)
    target = folder / "fer2013new.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", *VOTE_COLUMNS])
        for index, row in enumerate(rows):
            votes = np.zeros(len(VOTE_COLUMNS), dtype=int)
            winner = {0: "NF", 3: "contempt", 4: "unknown"}.get(index, FER2013_LABELS[row["emotion"]])
            votes[VOTE_COLUMNS.index(winner)] = 7
            np.add.at(votes, rng.integers(0, 8, size=3), 1)
            if index == 1:
                votes[:] = 0
                votes[[0, 1]] = 5
            name = "" if index == 2 else f"fer{index:07d}.png"
            writer.writerow([row["Usage"], name, *votes.tolist()])
    return target


def fer2013_release_table(fer2013: Path) -> ReleaseTable:
    """A stand-in for the shipped table of the original release, made from ``fer2013``: FER+
    checks every face against the release row it joins, so a generated fer2013.csv needs its own."""
    with open(fer2013, newline="") as handle:
        rows = list(csv.DictReader(handle))
    faces = np.stack([np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48) for row in rows])
    return ReleaseTable(usage=np.array([USAGES.index(row["Usage"]) for row in rows], dtype=np.uint8),
                        key=np.array([b""] * len(rows)), phash=phash64(faces), has_phash=np.ones(len(rows), bool))


def fer2013_folder_archive(folder: Path, per_class: int = 6, seed: int = 1) -> Path:
    """The Kaggle image-folder release as its ``.tar.gz``: ``images/train/<class>/Training_<n>.jpg``
    and ``images/test/<class>/{PublicTest,PrivateTest}_<n>.jpg``."""
    images, labels = demo_faces(per_class, seed)
    target = folder / "fer2013-images.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as archive:
        for number, (pixels, label) in enumerate(zip(images, labels)):
            usage = ("PublicTest", "PrivateTest", "Training", "Training")[number % 4]
            part = "train" if usage == "Training" else "test"
            data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            member = tarfile.TarInfo(f"images/{part}/{FOLDER_NAMES[label]}/{usage}_{1000 + number}.jpg")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return target


def _number_file(path: Path, rows: np.ndarray) -> None:
    """Numbers the way CK+ writes them: ``   3.0000000e+00`` per value, one row per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("".join(f"   {value:.7e}" for value in row) + "\n" for row in np.atleast_2d(rows)))


def _ckplus_sequences(subjects: int, seed: int) -> list[tuple[str, str, str, list[np.ndarray]]]:
    """(subject, sequence number, label, three frames neutral -> apex) for CK+-like sequences;
    contempt, which the demo does not draw, gets neutral faces."""
    labels = list(CKPLUS_CODES)[1:]  # every emotion but neutral, contempt included

    def by_label(draw_seed: int) -> dict[str, np.ndarray]:
        images, drawn = demo_faces(subjects * 2, draw_seed)
        return {label: images[[i for i, name in enumerate(drawn) if name == label]] for label in set(drawn)}

    apexes, onsets = by_label(seed), by_label(seed + 1000)["neutral"]
    apexes["contempt"] = by_label(seed + 2000)["neutral"]
    sequences = []
    for subject in range(subjects):
        for number in range(2):
            label = labels[(subject * 2 + number) % len(labels)]
            apex, onset = apexes[label][subject * 2 + number], onsets[subject * 2 + number]
            frames = [onset, ((onset.astype(np.uint16) + apex) // 2).astype(np.uint8), apex]
            sequences.append((f"S{100 + subject:03d}", f"{number + 1:03d}", label, frames))
    return sequences


def ckplus_original(folder: Path, subjects: int = 8, seed: int = 2) -> Path:
    """The original CK+ layout: ``cohn-kanade-images/S###/###/*.png`` frames (96x96 here), the
    ``Emotion`` code on the last frame, its ``FACS`` AUs, and 68 ``Landmarks`` per frame."""
    root = folder / "CK+"
    rng = np.random.default_rng(seed)
    for subject, number, label, frames in _ckplus_sequences(subjects, seed):
        for index, frame in enumerate(frames, start=1):
            stem = f"{subject}_{number}_{index:08d}"
            _png(root / "cohn-kanade-images" / subject / number / f"{stem}.png",
                 cv2.resize(frame, (96, 96), interpolation=cv2.INTER_LINEAR))
            _number_file(root / "Landmarks" / subject / number / f"{stem}_landmarks.txt",
                         rng.uniform(10, 86, size=(68, 2)))
        _number_file(root / "Emotion" / subject / number / f"{stem}_emotion.txt", np.array([[float(CKPLUS_CODES[label])]]))
        _number_file(root / "FACS" / subject / number / f"{stem}_facs.txt", np.array([[4.0, 2.0], [15.0, 0.0]]))
    return root


def ckplus48(folder: Path, subjects: int = 6, seed: int = 3) -> Path:
    """The CK+48 release: ``<class>/S###_###_########.png`` 48x48 crops, the last 3 frames per sequence."""
    root = folder / "CK+48"
    for subject, number, label, frames in _ckplus_sequences(subjects, seed):
        for index, frame in enumerate(frames, start=1):
            _png(root / CK48_FOLDERS.get(label, label) / f"{subject}_{number}_{index + 10:08d}.png", frame)
    return root


def jaffe(folder: Path, subjects: tuple[str, ...] = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"),
          seed: int = 4) -> Path:
    """JAFFE: ``<subject>.<EXPRESSION><pose>.<number>.tiff``, gray TIFFs (64x64 here, 256x256 in the release)."""
    root = folder / "jaffe"
    root.mkdir(parents=True, exist_ok=True)
    images, labels = demo_faces(len(subjects), seed)
    for number, (pixels, label) in enumerate(zip(images, labels)):
        subject = subjects[number % len(subjects)]
        Image.fromarray(cv2.resize(pixels, (64, 64))).save(root / f"{subject}.{JAFFE_CODES[label]}1.{number + 1}.tiff")
    return root


def image_folder(folder: Path, per_class: int = 4, seed: int = 5) -> Path:
    """A plain image folder: ``<class name>/<n>.png`` with everyday class spellings (happy, sad...)."""
    root = folder / "my-faces"
    images, labels = demo_faces(per_class, seed)
    for number, (pixels, label) in enumerate(zip(images, labels)):
        _png(root / FOLDER_NAMES[label] / f"{number:04d}.png", pixels)
    return root


def hub_parquet(folder: Path, per_class: int = 4, seed: int = 6) -> Path:
    """A hub dataset as its parquet files: ``data/{train,test}-00000-of-00001.parquet`` with an
    ``image`` column and a ``ClassLabel`` whose order is not FER2013's."""
    import datasets

    root = folder / "hub-faces"
    images, labels = demo_faces(per_class, seed)
    names = sorted(set(labels))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for split, part in (("train", slice(0, None, 2)), ("test", slice(1, None, 2))):
        dataset = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(pixels) for pixels in images[part]],
             "label": [names.index(label) for label in labels[part]]}, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root
