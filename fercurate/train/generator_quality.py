"""The quality report of a face generator, judged by the reference classifier: builds a
:class:`~fercurate.synth.quality.QualityReport` from generated faces and writes it to a run folder.

Per class of generated faces (see :mod:`fercurate.synth.quality` for the definitions):

- classification accuracy score: the share the classifier (a ``best.pt`` of ``fercurate train``,
  trained on real faces) assigns to the intended label; None for a label it does not know;
- Frechet distance and k-NN precision/recall against the real training faces of the class, in the
  classifier's penultimate-layer features (:func:`classifier_features`);
- memorisation: the mean |pixel difference| to the nearest real training face (of any class), and
  the near-copy verdict of the synthesis filter (:func:`fercurate.synth.filter.score`, reused so
  that the report counts exactly what ``fercurate synthesize`` rejects);
- within-class diversity.

The ceiling is the same computation for real faces held apart from training (e.g. the validation
split) in place of the generated ones: what real, unseen faces score on every number. Note that the
Frechet distance is biased upwards for small sets, so compare a class's value with the ceiling's
at similar counts.

The classifier describes at most ``real_per_class`` training faces of each class (a seeded draw;
FER2013's 27k training faces cost minutes of CPU forwards, 2,000 per class a fraction of that and
estimate a 1,024-dimensional covariance well); memorisation and the near-copy verdict always search
every training face, since a copy of any one of them counts.

This module lives in ``train`` because it runs a classifier; the metric math is in ``synth``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from fercurate.atomic import atomic_path
from fercurate.compute import load_images
from fercurate.errors import OptionError
from fercurate.export import ExportOptions, plan_export
from fercurate.splits import SplitOptions
from fercurate.phash import image_hashes
from fercurate.schema import face_filepaths
from fercurate.synth.filter import REJECT_NEAR_COPY, FilterOptions, score, thumbnails
from fercurate.synth.quality import (
    ClassQuality,
    QualityReport,
    frechet_distance,
    nearest_real_distances,
    precision_recall,
    within_class_diversity,
)
from fercurate.train.data import Normalization
from fercurate.train.loop import load_classifier
from fercurate.train.models import INPUT_SIDE
from fercurate.workspace import Workspace

ALL_CLASSES = "all"
CONTACT_SHEET_COLUMNS = 8
REAL_PER_CLASS = 2000  # training faces per class the classifier describes (see the module docstring)
_CONTACT_SCALE = 2  # each 48x48 face drawn at 96x96
_LABEL_WIDTH = 110  # pixels left of each row for the class name


@torch.no_grad()
def classifier_features(model: nn.Module, images: np.ndarray, normalization: Normalization, *,
                        batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer features ``(N, F)`` (the input of the model's last ``nn.Linear``: 1024 for
    ``vgg``, 1280 for ``mobilenet_v2``, 144 for ``tiny``) and softmax probabilities ``(N, C)`` of
    uint8 faces ``(N, 48, 48)``, in eval mode (the model's mode is restored afterwards)."""
    if len(images) == 0:
        raise ValueError("no images to describe")
    head = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().float().cpu()))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probabilities = []
    try:
        pixels = torch.as_tensor(images, dtype=torch.uint8)
        for start in range(0, len(pixels), batch):
            x = normalization.apply(pixels[start:start + batch].to(device))
            x = x.contiguous(memory_format=torch.channels_last)
            probabilities.append(torch.softmax(model(x).float(), dim=1).cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).double().numpy(), torch.cat(probabilities).double().numpy()


class _Judge:
    """What every face set is measured against: the classifier and the real training faces."""

    def __init__(self, classifier: str | Path, train_faces: np.ndarray, train_labels: Sequence[str],
                 labels: Sequence[str], filter_options: FilterOptions | None, k: int,
                 real_per_class: int | None) -> None:
        self.model, meta = load_classifier(classifier)
        self.normalization: Normalization = meta["normalization"]
        self.column = {name: index for index, name in enumerate(meta["class_names"])}
        self.train_faces = train_faces
        self.train_hashes = image_hashes(train_faces)
        train_labels = np.asarray(train_labels, dtype=object)
        described = _per_class_draw(train_labels, labels, real_per_class)
        self.real_labels = train_labels[described]
        self.real_features = classifier_features(self.model, train_faces[described], self.normalization)[0] \
            if len(described) else np.empty((0, 0))
        self.filter_options = (filter_options or FilterOptions()).model_copy(update={"judge": None})
        self.k = k

    def measure(self, faces: Mapping[str, np.ndarray]) -> tuple[list[ClassQuality], ClassQuality]:
        """Per class and pooled quality of ``faces`` (label -> uint8 ``(N, 48, 48)``)."""
        labels = np.concatenate([np.full(len(images), label, dtype=object) for label, images in faces.items()])
        if len(labels) == 0:
            return [ClassQuality(label, 0) for label in faces], ClassQuality(ALL_CLASSES, 0)
        images = np.concatenate([images for images in faces.values() if len(images)])
        features, probabilities = classifier_features(self.model, images, self.normalization)
        _, distance = nearest_real_distances(images, self.train_faces)
        verdict = score(images, self.train_faces, np.full(len(images), -1), labels, self.filter_options,
                        real_hashes=self.train_hashes).reason
        near_copy = verdict == REJECT_NEAR_COPY
        columns = np.array([self.column.get(label, -1) for label in labels])  # -1: unknown to the classifier
        correct = probabilities.argmax(axis=1) == columns

        def quality(label: str, chosen: np.ndarray, real: np.ndarray) -> ClassQuality:
            count = int(chosen.sum())
            if count == 0:
                return ClassQuality(label, 0)
            known = chosen & (columns >= 0)
            fake_features, real_features = features[chosen], self.real_features[real]
            frechet = frechet_distance(fake_features, real_features) \
                if min(len(fake_features), len(real_features)) >= 2 else None
            precision, recall = precision_recall(real_features, fake_features, k=self.k) \
                if min(len(fake_features), len(real_features)) > self.k else (None, None)
            return ClassQuality(
                label=label, count=count,
                classification_accuracy=float(correct[known].mean()) if known.any() else None,
                frechet_distance=frechet, precision=precision, recall=recall,
                nearest_real_median=float(np.median(distance[chosen])),
                nearest_real_p5=float(np.percentile(distance[chosen], 5)),
                near_copies=int(near_copy[chosen].sum()), near_copy_share=float(near_copy[chosen].mean()))

        classes = []
        for label, faces_of_label in faces.items():
            entry = quality(label, labels == label, self.real_labels == label)
            entry.diversity = within_class_diversity(faces_of_label) if len(faces_of_label) >= 2 else None
            classes.append(entry)
        overall = quality(ALL_CLASSES, np.ones(len(labels), bool), np.ones(len(self.real_labels), bool))
        diverse = [entry for entry in classes if entry.diversity is not None]
        overall.diversity = float(np.average([entry.diversity for entry in diverse],
                                             weights=[entry.count for entry in diverse])) if diverse else None
        return classes, overall


def _per_class_draw(labels: np.ndarray, wanted: Sequence[str], per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``per_class`` entries of each ``wanted`` label (all of them when
    None), drawn by a seeded permutation, so the same faces are described on every run."""
    chosen = [np.flatnonzero(labels == label) for label in wanted]
    if per_class is not None:
        rng = np.random.default_rng(seed)
        chosen = [rng.permutation(indices)[:per_class] for indices in chosen]
    return np.sort(np.concatenate([*chosen, np.empty(0, np.int64)]).astype(np.int64))


def quality_report(samples: Mapping[str, np.ndarray], *, train_faces: np.ndarray, train_labels: Sequence[str],
                   held_out_faces: np.ndarray, held_out_labels: Sequence[str], classifier: str | Path,
                   generator: str, filter_options: FilterOptions | None = None, k: int = 3,
                   real_per_class: int | None = REAL_PER_CLASS) -> QualityReport:
    """The quality of ``samples`` (label -> uint8 faces ``(N, 48, 48)`` generated for that label)
    against the real ``train_faces`` (uint8 ``(M, 48, 48)``, labels aligned), judged by the
    ``classifier`` checkpoint; the ceiling measures ``held_out_faces`` (real faces not trained on)
    of the same labels the same way. ``filter_options`` are the near-copy thresholds (its judge is
    not used); ``k`` the neighbours of the precision/recall manifolds; ``real_per_class`` caps the
    training faces of each class whose features are compared (None: all; memorisation always
    searches all).

    The pooled row (label ``all``) compares all faces with the described training faces of the
    report's labels, so it also reflects a class mix that differs from the training set's."""
    if real_per_class is not None and real_per_class < 2:
        raise ValueError(f"real_per_class must be at least 2 (a covariance needs two faces), got {real_per_class}")
    if not samples:
        raise ValueError("no classes of generated faces to judge")
    for name, images in [*samples.items(), ("train_faces", train_faces), ("held_out_faces", held_out_faces)]:
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (INPUT_SIDE, INPUT_SIDE):
            raise ValueError(f"{name}: faces must be uint8 (N, {INPUT_SIDE}, {INPUT_SIDE}), "
                             f"got {images.dtype} {images.shape}")
    if len(train_faces) != len(train_labels) or len(held_out_faces) != len(held_out_labels):
        raise ValueError("train_faces/train_labels and held_out_faces/held_out_labels must align")
    judge = _Judge(classifier, train_faces, train_labels, list(samples), filter_options, k, real_per_class)
    held_out_labels = np.asarray(held_out_labels, dtype=object)
    ceiling_classes, ceiling_overall = judge.measure({label: held_out_faces[held_out_labels == label]
                                                      for label in samples})
    classes, overall = judge.measure(samples)
    unknown = [label for label in samples if label not in judge.column]
    notes: dict[str, object] = {"labels_unknown_to_classifier": unknown} if unknown else {}
    notes["real_faces_described"] = {label: int((judge.real_labels == label).sum()) for label in samples}
    ceiling = QualityReport("held-apart real faces", ceiling_classes, ceiling_overall, classifier=str(classifier), k=k)
    return QualityReport(generator, classes, overall, ceiling=ceiling, classifier=str(classifier), k=k, notes=notes)


def samples_contact_sheet(samples: Mapping[str, np.ndarray], path: str | Path, *,
                  columns: int = CONTACT_SHEET_COLUMNS) -> Path:
    """A PNG grid of generated faces: one row per class (its name at the left), its first
    ``columns`` faces (empty cells black). Written atomically; returns ``path``."""
    cell = INPUT_SIDE * _CONTACT_SCALE
    sheet = np.zeros((max(len(samples), 1) * cell, _LABEL_WIDTH + columns * cell), np.uint8)
    for row, (label, images) in enumerate(samples.items()):
        shown = images[:columns]
        if len(shown):
            enlarged = np.repeat(np.repeat(shown, _CONTACT_SCALE, axis=1), _CONTACT_SCALE, axis=2)
            sheet[row * cell:(row + 1) * cell, _LABEL_WIDTH:_LABEL_WIDTH + len(shown) * cell] = \
                enlarged.transpose(1, 0, 2).reshape(cell, -1)
        cv2.putText(sheet, label[:12], (4, row * cell + cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1,
                    cv2.LINE_AA)
    path = Path(path)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), sheet):  # the temporary name keeps the .png suffix
            raise OSError(f"could not write {path}")
    return path


def write_quality_report(report: QualityReport, folder: str | Path, samples: Mapping[str, np.ndarray]) -> Path:
    """Write ``quality.json``, ``quality.md`` and the contact sheet ``quality-samples.png`` of
    ``samples`` into ``folder`` (each atomically); returns the path of ``quality.json``."""
    folder = Path(folder)
    json_path = folder / "quality.json"
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    with atomic_path(folder / "quality.md") as temporary:
        temporary.write_text(report.to_markdown())
    samples_contact_sheet(samples, folder / "quality-samples.png")
    return json_path


def report_generator(workspace: Workspace, run: str | Path, *, classifier: str | Path, per_class: int = 500,
                     first_seed: int = 0, split: SplitOptions | None = None, guidance: float | None = None,
                     steps: int | None = None, device: str = "auto",
                     real_per_class: int | None = REAL_PER_CLASS) -> QualityReport:
    """The quality report of the generator in ``run`` (``per_class`` samples of each class, seeds
    ``first_seed`` on), written beside it (``quality.json``, ``quality.md``, ``quality-samples.png``).
    Its training faces are the ones it learnt from (ids stored with it); the ceiling's held-apart
    faces are the real validation faces of the same sources under ``split``; ``real_per_class`` as
    in :func:`quality_report`."""
    from fercurate.synth.generators import load_generator

    generator = load_generator(run, device=device)
    if not Path(classifier).is_file():
        raise OptionError(f"--classifier {classifier} does not exist",
                          "give the best.pt of a `fercurate train` run trained on real faces")
    rows, _, _, _ = plan_export(workspace, ExportOptions(split=split or SplitOptions(), apply_rebalance_drops=False))
    real = rows[~rows["is_synthetic"].astype(bool) & (rows["source"] != "synthetic")]
    trained = real[real["id"].isin(set(generator.training_ids))]
    if trained.empty:
        raise OptionError(f"none of the faces {generator.path.parent} learnt from is in {workspace.root}",
                          "give the workspace the generator was trained on")
    held_out = real[(real["split"] == "validation") & real["source"].isin(set(trained["source"]))
                    & real["label"].isin(generator.class_names)]
    seeds = list(range(first_seed, first_seed + per_class))
    samples = {label: thumbnails(list(generator.sample(label, seeds, guidance=guidance, steps=steps)))
               for label in generator.class_names}
    report = quality_report(samples, train_faces=load_images(workspace.root, face_filepaths(trained)),
                            train_labels=trained["label"].tolist(),
                            held_out_faces=load_images(workspace.root, face_filepaths(held_out)),
                            held_out_labels=held_out["label"].tolist(), classifier=classifier,
                            real_per_class=real_per_class,
                            generator=f"{generator.kind} {generator.path.parent} (step {generator.step}, "
                                      f"checkpoint {generator.checkpoint_sha1[:12]})")
    write_quality_report(report, generator.path.parent, samples)
    return report
