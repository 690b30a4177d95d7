"""``synthesize``: fill the rebalance plan's deficits with filtered, occluded augmentations and with
faces of trained generators (``cgan``, ``ddpm``), and commit them as synthetic rows;
``remove_synthetic`` takes them out again; ``make_occluded_test_set`` writes the occluded copy of
the test split.

Invariants:

- Deterministic: a face's id is ``synthetic/augment/<parent id>/<occluder>-<seed>`` and its pixels depend
  only on the parent, the options and that seed (:func:`~fercurate.synth.augment.face_seed`). Ids
  already in the workspace are not made again, so re-running with the same options adds nothing.
- Parents are real training rows (as export splits them); a synthetic row carries ``parent_id``,
  so ``leakage_groups`` puts it in its parent's group and it can only ever train.
- A generated face's id is ``synthetic/<kind>/<checkpoint sha1[:12]>/<label>-<seed>``: the same
  weights, options and seed make the same face. It has no parent (so it trains, see
  :func:`~fercurate.splits.assign_splits`); a generator that learnt from faces the plan's split does
  not train on is refused.
- A face that fails the filter is not committed; it is counted under its reason and the class tries
  the next variants (up to ``retries`` rounds) to still reach its target.
- Everything is committed in one ``write_manifest`` under the workspace's exclusive lock; images
  are written first (content-addressed, atomic), so a killed run leaves the old manifest intact.
- Removal deletes rows only (images are content-addressed and may be shared); removing all that a
  run added restores the manifest exactly.

Occluded test rows (``make_occluded_test_set``) are *not* synthetic training data: they are real
test faces with an occluder drawn on, made to measure robustness. They keep ``is_synthetic`` False
(synthetic rows may never be in a test split), have source ``synthetic`` (so no re-ingest of the
parent's source touches them), their parent's ``source_split``, the ``occluded-test`` flag, a generator
``occluded-test:occlusion-<name>`` and ``parent_id``: export's leakage groups put them with their parent
in the test split; export ``--exclude-flag occluded-test`` leaves them out of a clean test set. They use
occluder types and a seed namespace disjoint from training's.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator, model_validator

from fercurate.align import transform_points
from fercurate.errors import OptionError
from fercurate.options import parse_device
from fercurate.schema import ROW_SCHEMA, face_filepaths
from fercurate.splits import REBALANCE_DROP_FLAG, SplitOptions
from fercurate.synth.augment import Strength, augment_faces, face_seed
from fercurate.phash import image_hashes
from fercurate.synth.filter import FilterOptions, score, thumbnails
from fercurate.synth.occluders import OCCLUDERS
from fercurate.synth.plan import GroupColumn, Method, RebalancePlan, parse_target, plan_from_counts, training_rows
from fercurate.synth.rows import derived_row, generated_row
from fercurate.workspace import Workspace

if TYPE_CHECKING:
    from fercurate.synth.generators import TrainedGenerator

OCCLUDED_TEST_FLAG = "occluded-test"
#: Occluders used for training faces by default; the rest are kept for the occluded test set.
TRAIN_OCCLUDERS = ("sunglasses", "mask", "hand", "cap")
TEST_OCCLUDERS = ("eyebar", "scarf")

Progress = Callable[[str, int, int], None]  # (stage, done since last call, stage total)


def _known_occluders(value: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(value) - set(OCCLUDERS))
    if unknown or not value:
        raise ValueError(f"unknown occluder(s) {unknown}: choose from {', '.join(OCCLUDERS)}")
    return tuple(dict.fromkeys(value))


class SynthesizeOptions(BaseModel):
    """What ``synthesize`` makes."""

    target: str = "uniform"
    methods: tuple[Method, ...] = ("augment",)
    occluders: tuple[str, ...] = TRAIN_OCCLUDERS
    max_synthetic_share: float = Field(0.5, ge=0, lt=1)
    by: GroupColumn | None = Field(None, description="balance label x value cells of this column, not labels")
    strength: Strength = "default"
    seed: int = Field(0, ge=0)
    retries: int = Field(3, ge=0, le=10, description="extra rounds for faces the filter rejected")
    split: SplitOptions = SplitOptions()
    filter: FilterOptions = FilterOptions()
    generators: tuple[Path, ...] = Field((), description="run folders of trained generators (one per kind in methods)")
    guidance: float | None = Field(None, ge=0, description="classifier-free guidance of a diffusion generator "
                                   "(None: the one it was trained with)")
    sampling_steps: int | None = Field(None, ge=1, le=1000, description="denoising steps of a diffusion generator")
    device: str = Field("auto", description="where generators sample: auto, cpu, cuda, cuda:N")
    dry_run: bool = False

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return parse_device(value)

    @model_validator(mode="after")
    def _generators_know_labels_only(self) -> SynthesizeOptions:
        if self.by is not None and set(self.methods) - {"augment"}:
            raise ValueError("generators are conditioned on the label only, so a plan by gender or age group "
                             "can only be filled by augmentation: use --method augment with --by")
        return self

    @field_validator("occluders")
    @classmethod
    def _registered(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _known_occluders(value)

    @field_validator("target")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_target(value)
        return value


@dataclass
class SynthesizeReport:
    """What a run planned, made, rejected and added."""

    plan: RebalancePlan
    added: Counter[str] = field(default_factory=Counter)  # per label
    already_present: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # per reason
    short: dict[str, int] = field(default_factory=dict)  # per label: still missing after retries
    placements: Counter[str] = field(default_factory=Counter)
    drops_changed: int = 0  # real rows whose rebalance-drop flag this run set or took off
    added_by_method: Counter[str] = field(default_factory=Counter)
    generators: dict[str, dict[str, Any]] = field(default_factory=dict)  # per kind: run, checkpoint, quality
    seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "added": dict(self.added), "added_total": sum(self.added.values()),
                "added_by_method": dict(self.added_by_method), "generators": self.generators,
                "already_present": self.already_present, "rejected": dict(self.rejected), "short": self.short,
                "placements": dict(self.placements), "subsampled": len(self.plan.drop_ids),
                "drops_changed": self.drops_changed, "seconds": round(self.seconds, 2), "dry_run": self.dry_run}


def _parent_faces(workspace: Workspace, manifest: pa.Table, parents: pd.DataFrame
                  ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Every parent's face as training reads it (aligned where it was, see :mod:`fercurate.align`)
    and its stored landmarks in that face's pixels (None where it has none), read once per run."""
    wanted = manifest.filter(pc.and_(pc.is_in(manifest["id"], pa.array(parents["id"].tolist(), pa.string())),
                                     pc.is_valid(manifest["landmarks"]))).select(["id", "landmarks", "alignment"])
    points = {row["id"]: np.asarray(row["landmarks"] if row["alignment"] is None
                                    else transform_points(row["landmarks"], row["alignment"]), np.float32)
              for row in wanted.to_pylist()}
    return ([workspace.read_image(path) for path in face_filepaths(parents)],
            [points.get(row_id) for row_id in parents["id"]])


def _derive(images: Sequence[np.ndarray], points: Sequence[np.ndarray | None], jobs: pd.DataFrame, *,
            stage: str, strength: Strength, progress: Progress | None) -> tuple[list[np.ndarray], list[str]]:
    """The faces of ``jobs`` (columns ``parent``: index into ``images`` / ``points``, ``occluder``, ``seed``),
    reported to ``progress`` as ``stage``."""
    parents = jobs["parent"].tolist()
    return augment_faces([images[i] for i in parents], jobs["occluder"].tolist(), jobs["seed"].tolist(),
                         landmarks=[points[i] for i in parents], strength=strength,
                         progress=(lambda n: progress(stage, n, len(jobs))) if progress else None)


def _jobs(parents: pd.DataFrame, label: str, start: int, count: int, occluders: Sequence[str], seed: int,
          namespace: str, group: tuple[str, str | None] | None = None) -> pd.DataFrame:
    """Variants ``start .. start+count-1`` of a class (or of a label x ``(column, value)`` cell):
    parents in a seeded order, cycling, each cycle with the next occluder."""
    chosen = parents["label"].to_numpy() == label
    if group is not None:
        chosen &= parents[group[0]].to_numpy() == group[1]
    members = np.flatnonzero(chosen)
    members = members[np.argsort(parents["id"].to_numpy()[members])]
    order = members[np.random.default_rng([seed, len(members)]).permutation(len(members))]
    variant = np.arange(start, start + count)
    parent = order[variant % len(order)]
    occluder = np.asarray(occluders)[(variant // len(order) + variant) % len(occluders)].tolist()
    parent_ids = parents["id"].to_numpy()[parent].tolist()
    seeds = [face_seed(seed, namespace, p, v) for p, v in zip(parent_ids, variant.tolist())]
    ids = [f"synthetic/{namespace}/{p}/{o}-{s}" for p, o, s in zip(parent_ids, occluder, seeds)]
    return pd.DataFrame({"id": ids, "parent": parent, "parent_id": parent_ids, "occluder": occluder, "seed": seeds,
                         "label": label})


def _generated_jobs(generator: TrainedGenerator, label: str, start: int, count: int, seed: int) -> pd.DataFrame:
    """Faces ``start .. start+count-1`` a generator makes for ``label``: each with its own seed, and
    an id that names the weights, so the same run, options and seed make the same faces."""
    namespace = f"{generator.kind}/{generator.checkpoint_sha1[:12]}"
    seeds = [face_seed(seed, namespace, label, v) for v in range(start, start + count)]
    return pd.DataFrame({"id": [f"synthetic/{namespace}/{label}-{s}" for s in seeds], "seed": seeds, "label": label,
                         "parent": -1})


def _load_generators(options: SynthesizeOptions, workspace: Workspace, train: pd.DataFrame
                     ) -> dict[str, TrainedGenerator]:
    """The trained generator of each generator method, checked against the plan's training faces:
    one that learnt from faces this split does not train on (validation, test) is refused."""
    from fercurate.synth.generators import load_generator

    wanted = [method for method in options.methods if method != "augment"]
    loaded: dict[str, TrainedGenerator] = {}
    for path in options.generators:
        generator = load_generator(path, device=options.device)
        if generator.kind in loaded:
            raise OptionError(f"two {generator.kind} generators given ({loaded[generator.kind].path.parent} and {path})",
                              "give one run folder per generator kind")
        if generator.kind not in wanted:
            raise OptionError(f"--generator {path} is a {generator.kind}, but --method does not ask for {generator.kind}",
                              f"add --method {generator.kind} (or --method mix)")
        loaded[generator.kind] = generator
    missing = [method for method in wanted if method not in loaded]
    if missing:
        raise OptionError(f"--method {', '.join(missing)} needs a trained generator",
                          f"train one (`fercurate generator train {missing[0]} RUN -w WS`) and pass --generator RUN")
    if loaded:
        not_training = set(workspace.manifest()["id"].to_pylist()) - set(train["id"])
        for generator in loaded.values():
            seen = not_training.intersection(generator.training_ids)
            if seen:
                raise OptionError(f"the {generator.kind} generator {generator.path.parent} learnt from {len(seen)} "
                                  f"face(s) that this split does not train on (e.g. {min(seen)})",
                                  "train the generator again with the split options this synthesize uses")
    return loaded


def _sample(generator: TrainedGenerator, label: str, seeds: list[int], options: SynthesizeOptions,
            stage: str, progress: Progress | None, chunk: int = 256) -> Iterator[np.ndarray]:
    """The faces of ``seeds``, made in chunks (``progress`` is told after each, as ``stage``)."""
    for start in range(0, len(seeds), chunk):
        part = seeds[start:start + chunk]
        yield from generator.sample(label, part, guidance=options.guidance, steps=options.sampling_steps)
        if progress is not None:
            progress(stage, len(part), len(seeds))


def synthesize(workspace: Workspace, options: SynthesizeOptions | None = None, *,
               progress: Progress | None = None) -> SynthesizeReport:
    """Rebalance the workspace's training split to ``options.target`` with augmented and generated
    faces (``options.methods`` share each class's deficit). With ``dry_run`` only the plan is computed."""
    options = options or SynthesizeOptions()
    started = time.perf_counter()
    workspace.require()
    with workspace.lock():
        train = training_rows(workspace, options.split)
        plan = plan_from_counts(train, target=options.target, methods=options.methods,
                                max_synthetic_share=options.max_synthetic_share, seed=options.split.seed,
                                by=options.by)
        report = SynthesizeReport(plan, dry_run=options.dry_run)
        generators = _load_generators(options, workspace, train)
        report.generators = {kind: generator.describe() for kind, generator in generators.items()}
        if options.dry_run:
            report.seconds = time.perf_counter() - started
            return report
        manifest, report.drops_changed = mark_rebalance_drops(workspace.manifest(), plan.drop_ids)
        present = set(manifest["id"].to_pylist())
        parent_rows = manifest.filter(pc.is_in(manifest["id"], pa.array(train["id"].tolist(), pa.string())))
        parent_by_id = {row["id"]: row for row in parent_rows.to_pylist()}
        rows: list[dict[str, Any]] = []
        parent_images: list[np.ndarray] = []
        parent_points: list[np.ndarray | None] = []
        real = real_hashes = None
        for entry in plan.classes if plan.total_new else ():
            for method, count in entry.new.items():
                wanted, start = count, 0
                for attempt in range(options.retries + 1):
                    if wanted <= 0:
                        break
                    stage = f"{method} {entry.name}" + (
                        f" (replacing rejected, round {attempt})" if attempt else "")
                    if method == "augment":
                        jobs = _jobs(train, entry.label, start, wanted, options.occluders, options.seed, "augment",
                                     group=None if plan.by is None else (plan.by, entry.group))
                    else:
                        jobs = _generated_jobs(generators[method], entry.label, start, wanted, options.seed)
                    start += wanted
                    existing = np.array([job_id in present for job_id in jobs["id"]], bool)
                    report.already_present += int(existing.sum())
                    wanted -= int(existing.sum())
                    jobs = jobs[~existing].reset_index(drop=True)
                    if jobs.empty:
                        continue
                    if real_hashes is None:  # read once, and only when something is to be made
                        parent_images, parent_points = _parent_faces(workspace, manifest, train)
                        real = thumbnails(parent_images)
                        real_hashes = image_hashes(real)
                    if method == "augment":
                        faces, placements = _derive(parent_images, parent_points, jobs, stage=stage,
                                                    strength=options.strength, progress=progress)
                    else:
                        faces = list(_sample(generators[method], entry.label, jobs["seed"].tolist(), options, stage,
                                             progress))
                        placements = []
                    scores = score(thumbnails(faces), real, jobs["parent"].to_numpy(), jobs["label"].to_numpy(),
                                   options.filter, real_hashes)
                    report.rejected.update(reason for reason in scores.reason if reason is not None)
                    records = jobs.to_dict("records")
                    kept = np.flatnonzero(np.equal(scores.reason, None))
                    with ThreadPoolExecutor(2) as pool:  # PNG encoding and file writes release the GIL
                        images = list(pool.map(lambda i: workspace.store_image(faces[i]), kept))
                    for i, image in zip(kept, images):
                        job = records[i]
                        filter_scores = {"near_copy_hamming": int(scores.hamming[i]),
                                         "near_copy_distance": float(scores.pixel_distance[i]),
                                         "judge_probability": None if np.isnan(scores.judge_probability[i])
                                         else float(scores.judge_probability[i])}
                        if method == "augment":
                            recipe = {"method": "augment", "occluder": job["occluder"], "strength": options.strength,
                                      "placement": placements[i], "target": options.target, "seed": options.seed}
                            rows.append(derived_row(
                                parent_by_id[job["parent_id"]], image, id=job["id"], source="synthetic",
                                is_synthetic=True, generator=f"augment:occlusion-{job['occluder']}",
                                seed=int(job["seed"]), recipe=json.dumps(recipe, sort_keys=True), **filter_scores))
                            report.placements[placements[i]] += 1
                        else:
                            generator = generators[method]
                            recipe = {"method": method, "run": str(generator.path.parent), "step": generator.step,
                                      "guidance": options.guidance, "sampling_steps": options.sampling_steps,
                                      "target": options.target, "seed": options.seed}
                            rows.append(generated_row(
                                entry.label, image, generator=f"{method}:{generator.checkpoint_sha1[:12]}",
                                checkpoint_sha1=generator.checkpoint_sha1, id=job["id"], seed=int(job["seed"]),
                                recipe=json.dumps(recipe, sort_keys=True), **filter_scores))
                        report.added[entry.label] += 1
                        report.added_by_method[method] += 1
                    wanted -= len(kept)
                if wanted > 0:
                    report.short[entry.label] = report.short.get(entry.label, 0) + wanted
        if rows or report.drops_changed:
            workspace.write_manifest(pa.concat_tables([manifest, pa.Table.from_pylist(rows, schema=ROW_SCHEMA)]))
    report.seconds = time.perf_counter() - started
    return report


def mark_rebalance_drops(manifest: pa.Table, drop_ids: Sequence[str]) -> tuple[pa.Table, int]:
    """The manifest with :data:`~fercurate.splits.REBALANCE_DROP_FLAG` on exactly ``drop_ids`` (added
    where missing, taken off rows no longer in the plan), and how many rows changed. A row that loses
    its only flag gets null flags back."""
    chosen = set(drop_ids)
    flags = manifest["flags"].to_pylist()
    changed = 0
    for index, (row_id, row_flags) in enumerate(zip(manifest["id"].to_pylist(), flags)):
        has = row_flags is not None and REBALANCE_DROP_FLAG in row_flags
        if has == (row_id in chosen):
            continue
        changed += 1
        rest = [flag for flag in row_flags or () if flag != REBALANCE_DROP_FLAG]
        flags[index] = rest + [REBALANCE_DROP_FLAG] if not has else (rest or None)
    if not changed:
        return manifest, 0
    position = manifest.schema.get_field_index("flags")
    return manifest.set_column(position, manifest.schema.field(position), pa.array(flags, pa.list_(pa.string()))), changed


def _generator_matches(generators: pa.ChunkedArray, generator: str) -> pa.ChunkedArray:
    """Rows whose generator is ``generator`` or one of its family (``augment`` matches ``augment:...``)."""
    return pc.or_(pc.equal(generators, generator), pc.starts_with(generators, f"{generator}:"))


def remove_synthetic(workspace: Workspace, generator: str | None = None) -> int:
    """Remove synthetic rows (of ``generator`` or its family when given; ``occluded-test`` removes the
    occluded test rows) and return how many were removed. When no synthetic training row is left, the
    plan's ``rebalance-drop`` flags are taken off too, so the manifest is as before ``synthesize``."""
    workspace.require()
    with workspace.lock():
        manifest = workspace.manifest()
        derived = pc.equal(manifest["source"], "synthetic")
        if generator is None:
            chosen = pc.and_(derived, manifest["is_synthetic"])
        else:
            chosen = pc.and_(derived, pc.fill_null(_generator_matches(manifest["generator"], generator), False))
        count = pc.sum(chosen).as_py() or 0
        remaining, undropped = manifest.filter(pc.invert(chosen)), 0
        if not pc.any(pc.fill_null(remaining["is_synthetic"], False)).as_py():  # the rebalance is undone whole
            remaining, undropped = mark_rebalance_drops(remaining, [])
        if count or undropped:
            workspace.write_manifest(remaining)
    return count


def make_occluded_test_set(workspace: Workspace, *, occluders: Sequence[str] = TEST_OCCLUDERS, seed: int = 0,
                           split: SplitOptions | None = None, strength: Strength = "light",
                           progress: Progress | None = None) -> int:
    """Add one occluded copy of every real test row (see the module docstring); returns how many
    rows were added (0 when they are all present already)."""
    from fercurate.export import ExportOptions, plan_export

    occluders = _known_occluders(occluders)
    workspace.require()
    with workspace.lock():
        manifest = workspace.manifest()
        synthetic = manifest.filter(pc.fill_null(manifest["is_synthetic"], False))
        trained = {g.split("occlusion-", 1)[-1] for g in synthetic["generator"].to_pylist() if "occlusion-" in g}
        overlap = sorted(trained & set(occluders))
        if overlap:
            raise OptionError(f"the occluded test set would use {', '.join(overlap)}, which training faces use too",
                              f"choose occluders not used for training, e.g. {', '.join(sorted(set(OCCLUDERS) - trained))}")
        rows_plan, _, _, _ = plan_export(workspace, ExportOptions(split=split or SplitOptions()))
        test = rows_plan[(rows_plan["split"] == "test") & (rows_plan["source"] != "synthetic")].reset_index(drop=True)
        if test.empty:
            raise OptionError(f"{workspace.root} has no test split to copy", "ingest a dataset with a test split")
        jobs = pd.concat([_jobs(test, label, 0, int((test["label"] == label).sum()), occluders, seed, OCCLUDED_TEST_FLAG)
                          for label in test["label"].unique()], ignore_index=True)
        present = set(manifest["id"].to_pylist())
        jobs = jobs[[job_id not in present for job_id in jobs["id"]]].reset_index(drop=True)
        if jobs.empty:
            return 0
        images, points = _parent_faces(workspace, manifest, test)
        faces, placements = _derive(images, points, jobs, stage=OCCLUDED_TEST_FLAG, strength=strength,
                                    progress=progress)
        parent_by_id = {row["id"]: row for row in
                        manifest.filter(pc.is_in(manifest["id"], pa.array(test["id"].tolist()))).to_pylist()}
        rows = []
        for i, job in enumerate(jobs.to_dict("records")):
            parent = parent_by_id[job["parent_id"]]
            recipe = {"method": OCCLUDED_TEST_FLAG, "occluder": job["occluder"], "strength": strength,
                      "placement": placements[i], "seed": seed}
            rows.append(derived_row(parent, workspace.store_image(faces[i]), id=job["id"], source="synthetic",
                                    source_split=parent["source_split"], is_synthetic=False,
                                    flags=[OCCLUDED_TEST_FLAG], generator=f"{OCCLUDED_TEST_FLAG}:occlusion-{job['occluder']}",
                                    seed=int(job["seed"]), recipe=json.dumps(recipe, sort_keys=True)))
        workspace.write_manifest(pa.concat_tables([manifest, pa.Table.from_pylist(rows, schema=ROW_SCHEMA)]))
    return len(rows)
