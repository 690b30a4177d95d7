"""Pipelines as YAML recipes: a workspace and the steps to run on it, in order.

    workspace: fercurate-workspace        # relative paths resolve against the recipe's folder
    steps:
      - ingest: {source: fer2013, path: data/fer2013.csv}
      - ingest: {source: ferplus, path: data/fer2013new.csv, options: {label_mode: majority}}
      - ingest: {source: jaffe, path: data/jaffe, align: true}     # then align this ingest's faces
      - align: {}                                                   # or align every face of the workspace
      - audit: {near_duplicate_distance: 4, fiftyone: true}
      - generator: {generator: cgan, output: runs/cgan, sources: [fer2013], options: {max_minutes: 60}}
      - synthesize: {target: "min:500", methods: [augment, cgan], generators: [runs/cgan], occluded_test: true}
      - export: {output: out, formats: [imagefolder, manifest]}
      - train: {output: runs/vgg, model: vgg, max_minutes: 30}
      - benchmark: {output: runs/bench, arms: [original, augmented], seeds: [0, 1, 2]}

String values may name environment variables, ``${VAR}`` or ``${VAR:-default}`` (e.g.
``path: ${FER2013_CSV}``, ``output: ${FERCURATE_OUTPUT:-out}/export``); an unset variable without a
default is refused before anything runs.

Every step kind is a model in :data:`STEPS` that extends the library's own options (``AlignOptions``,
``AuditOptions``, ``SynthesizeOptions``, ``ExportOptions``, ``TrainConfig``, ``BenchmarkConfig``; a
``generator`` step's ``options`` are validated by its kind's ``GeneratorConfig``): one definition of
each option for the library, the CLI and recipes. Each step is validated before anything runs, so a typo
fails at once with the step's number and the key.

Runs are recorded and resumable. :func:`run_recipe` keeps one record per recipe in the workspace,
``<workspace>/recipe-runs/<recipe name>.json``, rewritten atomically as each step starts and ends:
per step its resolved options, its inputs (a fingerprint of the workspace's data before it and, for
an ingest, of the source files), the fingerprint after it, its outputs, its status (``started``,
``done``, ``failed``, ``interrupted``, or ``outdated`` once an earlier step is redone), its times and
its result summary. :func:`plan_recipe` compares the recipe with that record, and a re-run

- skips a step recorded ``done`` whose options, source files and outputs are unchanged and whose
  workspace is as the recipe's last finished step left it;
- redoes the first step whose options or inputs changed (or that ``force`` names, or that was
  interrupted or failed), and every step after it, since their input changes with it;
- continues an interrupted ``train`` or ``generator`` step from its ``last.pt`` when its options (other than
  ``max_minutes`` and ``log_every``) and its data are unchanged.

A step redone into a folder this recipe wrote before starts over there: ``export`` replaces its
earlier export, ``train`` and ``benchmark`` remove the earlier checkpoints (``last.pt``, ``best.pt``)
first. A folder the recipe did not write is left to the step's own options (``overwrite``,
``resume``), and the plan refuses one the step would fail on before anything runs. The workspace's
data fingerprint (:func:`workspace_fingerprint`) is the SHA-1 of its manifest, review log and audit
tables; a source's is the size and modification time of its files; the demo is made from its options.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fercurate.align import AlignOptions, AlignReport, align_workspace
from fercurate.atomic import atomic_path
from fercurate.audit.result import AuditResult
from fercurate.audit.run import AuditOptions, audit_workspace, summary_json
from fercurate.compute import resolve_device
from fercurate.errors import FercurateError, RecipeError, TrainError, WorkspaceError
from fercurate.export import ExportOptions, ExportReport, check_output_folder, export_dataset
from fercurate.options import option_error, parse_balance
from fercurate.sources import SOURCES, Source, open_source
from fercurate.splits import SplitOptions
from fercurate.synth.generators import GeneratorConfig, generator_config, train_generator
from fercurate.synth.run import SynthesizeOptions, SynthesizeReport, make_occluded_test_set, synthesize
from fercurate.train.loop import RESUMABLE_CHANGES, TrainConfig
from fercurate.train.runs import BenchmarkConfig, run_benchmark, train_on_workspace
from fercurate.workspace import IngestReport, Workspace

Options = TypeVar("Options", bound=BaseModel)


def library_options(step: BaseModel, model: type[Options]) -> Options:
    """The library's own options ``model`` from a step that extends it: the step's own fields
    (``kind``, ``output``, ...) are dropped."""
    return model.model_validate(step.model_dump(include=set(model.model_fields)))


class IngestStep(BaseModel):
    """``ingest``: a source name, its path (none for ``demo``), and the reader's options."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ingest"] = "ingest"
    source: str
    path: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    align: bool = Field(False, description="then align this run's faces (as an `align` step does)")

    def reader(self, workspace: Workspace) -> Source:
        """The source reader this step describes."""
        return open_source(self.source, self.path, workspace_root=workspace.root, **self.options)


class AlignStep(AlignOptions):
    """``align``: every real face of the workspace framed to the canonical geometry."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["align"] = "align"

    def align_options(self) -> AlignOptions:
        return library_options(self, AlignOptions)


class AuditStep(AuditOptions):
    """``audit``: the audit's options, plus whether to sync the findings into FiftyOne."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["audit"] = "audit"
    fiftyone: bool = False

    def audit_options(self) -> AuditOptions:
        """The audit's own options, without the step's."""
        return library_options(self, AuditOptions)


class SynthesizeStep(SynthesizeOptions):
    """``synthesize``: the rebalance's options, plus whether to also write the occluded test copies."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["synthesize"] = "synthesize"
    occluded_test: bool = False

    def synthesize_options(self) -> SynthesizeOptions:
        return library_options(self, SynthesizeOptions)


class GeneratorStep(BaseModel):
    """``generator``: train a generator of kind ``generator`` (cgan, ddpm) into ``output`` on the
    training faces of ``sources`` (default: all); ``options`` are the kind's own (see
    ``fercurate generator train --help``), validated by its configuration model."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["generator"] = "generator"
    generator: Literal["cgan", "ddpm"]
    output: Path
    options: dict[str, Any] = Field(default_factory=dict)
    split: SplitOptions = Field(default_factory=SplitOptions)
    sources: list[str] | None = None
    resume: bool = False

    @model_validator(mode="after")
    def _options_valid(self) -> GeneratorStep:
        self.config()
        return self

    def config(self) -> GeneratorConfig:
        return generator_config(self.generator, **self.options)


class ExportStep(ExportOptions):
    """``export``: the export's options and the output folder."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["export"] = "export"
    output: Path

    def export_options(self) -> ExportOptions:
        return library_options(self, ExportOptions)


class TrainStep(TrainConfig):
    """``train``: the training configuration, the run folder, and what to train on."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["train"] = "train"
    output: Path
    split: SplitOptions = Field(default_factory=SplitOptions)
    sources: list[str] | None = None
    exclude_flags: list[str] = Field(default_factory=list, description="leave out rows carrying these flags")
    balance: str | None = None
    resume: bool = False
    tta_flip: bool = False

    def train_config(self) -> TrainConfig:
        return library_options(self, TrainConfig)


class BenchmarkStep(BenchmarkConfig):
    """``benchmark``: the benchmark's configuration and its output folder."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["benchmark"] = "benchmark"
    output: Path
    overwrite: bool = Field(False, description="replace an earlier benchmark in output (a folder with benchmark.json)")

    def benchmark_config(self) -> BenchmarkConfig:
        return library_options(self, BenchmarkConfig)


#: Every step kind a recipe may use, in the order data flows.
STEPS: dict[str, type[BaseModel]] = {"ingest": IngestStep, "align": AlignStep, "audit": AuditStep,
                                     "generator": GeneratorStep,
                                     "synthesize": SynthesizeStep, "export": ExportStep, "train": TrainStep,
                                     "benchmark": BenchmarkStep}
Step = IngestStep | AlignStep | AuditStep | GeneratorStep | SynthesizeStep | ExportStep | TrainStep | BenchmarkStep
#: Steps that train from a checkpoint (``last.pt`` in their output) and can continue an interrupted run.
_RESUMING = (TrainStep, GeneratorStep)


class Recipe(BaseModel):
    """A workspace and the steps to run on it; ``name`` names its run record in the workspace
    (the recipe file's name without ``.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    workspace: Path
    steps: list[Step]
    name: str = "recipe"
    path: Path | None = None


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_variables(value: Any, where: str) -> Any:
    """``value`` (a YAML document or part of one) with ``${VAR}`` / ``${VAR:-default}`` replaced in
    every string from the environment."""
    if isinstance(value, dict):
        return {key: expand_variables(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_variables(item, where) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise RecipeError(f"{where} uses ${{{name}}}, which is not set",
                          f"set {name} (e.g. `{name}=/path/to/data fercurate run ...`), or write ${{{name}:-default}}")
    return _VARIABLE.sub(substitute, value)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; relative paths in it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist (recipes/ has quickstart.yaml and others)")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise RecipeError(f"{path} must be a mapping with 'workspace' and 'steps'", "see recipes/quickstart.yaml")
    document = expand_variables(document, path.name)
    steps = []
    for number, entry in enumerate(document.get("steps") or [], start=1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecipeError(f"step {number} of {path.name} must be one mapping like '- ingest: {{...}}'")
        (kind, body), = entry.items()
        model = STEPS.get(kind)
        if model is None:
            raise RecipeError(f"step {number} of {path.name}: unknown step {kind!r}", f"use {', '.join(STEPS)}")
        try:
            step = model.model_validate(body or {})
        except ValidationError as error:
            raise RecipeError(f"step {number} ({kind}) of {path.name}: {option_error(error, kind).message}") from None
        if isinstance(step, IngestStep) and step.source not in SOURCES:
            raise RecipeError(f"step {number} of {path.name}: unknown source {step.source!r}",
                              f"use one of {', '.join(SOURCES)}")
        steps.append(step)
    base = path.resolve().parent

    def resolve(value: Path | None) -> Path | None:
        return None if value is None else (value if value.is_absolute() else base / value).resolve()

    for step in steps:
        if isinstance(step, IngestStep):
            step.path = resolve(step.path)
        elif isinstance(step, AuditStep) and step.demographics is not None:
            step.demographics = resolve(step.demographics)
        elif isinstance(step, SynthesizeStep):
            step.filter.judge = resolve(step.filter.judge)
            step.generators = tuple(resolve(path) for path in step.generators)
        elif isinstance(step, (ExportStep, TrainStep, BenchmarkStep, GeneratorStep)):
            step.output = resolve(step.output)
    workspace = resolve(Path(document["workspace"])) if document.get("workspace") else None
    if workspace is None:
        raise RecipeError(f"{path.name} names no workspace")
    return Recipe(workspace=workspace, steps=steps, name=path.stem, path=path.resolve())


def run_step(step: Step, workspace: Workspace, **progress: Any
             ) -> IngestReport | AlignReport | AuditResult | SynthesizeReport | ExportReport | dict[str, Any]:
    """Run one step on the workspace (``progress`` is passed to the stage's own function)."""
    if isinstance(step, IngestStep):
        report = workspace.ingest(step.reader(workspace), **progress)
        if step.align and report.rows is not None and report.rows.num_rows:
            report.alignment = align_workspace(workspace, ids=report.rows["id"].to_pylist()).to_dict()
        return report
    if isinstance(step, AlignStep):
        return align_workspace(workspace, step.align_options())
    if isinstance(step, SynthesizeStep):
        report = synthesize(workspace, step.synthesize_options(), **progress)
        if step.occluded_test:
            make_occluded_test_set(workspace, split=step.split, **progress)
        return report
    if isinstance(step, ExportStep):
        return export_dataset(workspace, step.output, step.export_options())
    if isinstance(step, TrainStep):
        return train_on_workspace(workspace, step.train_config(), step.output, step.split, step.sources,
                                  step.balance, step.resume, step.tta_flip, exclude_flags=step.exclude_flags,
                                  **progress)
    if isinstance(step, GeneratorStep):
        return train_generator(workspace, step.output, step.config(), split=step.split, sources=step.sources,
                               resume=step.resume, **progress)
    if isinstance(step, BenchmarkStep):
        if step.overwrite and (step.output / "benchmark.json").is_file():
            shutil.rmtree(step.output)
        return run_benchmark(workspace, step.benchmark_config(), step.output, **progress)
    result = audit_workspace(workspace, step.audit_options(), **progress)
    if step.fiftyone:
        from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone

        sync_audit_to_fiftyone(workspace)
    return result


# --- run records: what ran, on what, with what result; the plan of a re-run -------------------------

RECORDS_FOLDER = "recipe-runs"
RECORD_FORMAT = "fercurate-recipe-run/1"
#: The workspace files a step reads besides content-addressed images (those are named by the manifest).
_DATA_FILES = ("manifest.parquet", "reviews.parquet")
_AUDIT_DATA_SUFFIXES = (".parquet", ".json")
#: The file in a step's output folder whose presence shows the output is complete (others: the path itself).
_OUTPUT_MARKERS = {"export": "export.json", "train": "metrics.json", "benchmark": "benchmark.json", "generator": "train.json",
                   "audit": "summary.json"}
_CHECKPOINTS = ("last.pt", "best.pt", "generator.pt")
#: Options that change how a step runs, not what it makes: changing them alone redoes nothing.
_NOT_COMPARED = frozenset({"resume", "overwrite", "log_every"})
#: Options of an interrupted training that may change while it still continues from its checkpoint.
_RESUMABLE = RESUMABLE_CHANGES | {"resume", "tta_flip"}
_STOPPED = {"started": "the last run stopped in it", "interrupted": "interrupted last time",
            "failed": "failed last time"}
Action = Literal["run", "redo", "resume", "skip"]


def workspace_fingerprint(workspace: Workspace) -> str:
    """SHA-1 of the workspace's data as steps read it: the manifest (which names every image by its
    pixel hash), the review log and the audit's tables; the same for any workspace nothing wrote to."""
    root = workspace.root
    audit = root / "audit"
    files = [root / name for name in _DATA_FILES]
    if audit.is_dir():
        files += sorted(path for path in audit.iterdir() if path.suffix in _AUDIT_DATA_SUFFIXES
                        and not path.name.startswith("."))
    digest = hashlib.sha1()
    for path in files:
        if not path.is_file():
            continue
        digest.update(f"{path.relative_to(root)}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def source_fingerprint(step: IngestStep) -> str | None:
    """The fingerprint of an ingest step's source files: each file's path, size and modification
    time (``missing`` when the path is gone); None for a source made from its options (the demo)."""
    if step.path is None:
        return None
    if not step.path.exists():
        return "missing"
    digest = hashlib.sha1()
    if step.path.is_file():
        stat = step.path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()
    for folder, folders, names in os.walk(step.path, followlinks=True):
        folders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(step.path)}\0{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def step_options(step: BaseModel) -> dict[str, Any]:
    """A step's resolved options (defaults filled in, paths absolute) as JSON."""
    return json.loads(step.model_dump_json())


def step_outputs(step: Step, workspace: Workspace) -> list[Path]:
    """Where a step writes: its output folder, or the workspace (and its audit folder)."""
    if isinstance(step, (ExportStep, TrainStep, BenchmarkStep, GeneratorStep)):
        return [step.output]
    if isinstance(step, AuditStep):
        return [workspace.root / "audit"]
    return [workspace.manifest_path]


def step_summary(step: Step, result: Any) -> dict[str, Any]:
    """What a step reports, JSON-ready (it is also kept in the run record)."""
    if isinstance(step, (IngestStep, AlignStep)):
        summary: dict[str, Any] = result.to_dict()
    elif isinstance(step, AuditStep):
        summary = dict(result.summary)
    elif isinstance(step, SynthesizeStep):
        report = result.to_dict()
        summary = {key: report[key] for key in ("added_total", "added_by_method", "already_present", "rejected",
                                                "subsampled", "seconds")}
    elif isinstance(step, ExportStep):
        summary = {key: value for key, value in result.to_dict().items() if key in ("output", "rows", "excluded")}
    elif isinstance(step, TrainStep):
        test = result["test"] or {}
        summary = {"output": str(step.output), "test_accuracy": test.get("accuracy"),
                   "test_macro_f1": test.get("macro_f1"), "steps": result["training"]["steps"]}
    elif isinstance(step, GeneratorStep):
        summary = {"generator": result["kind"], "trained_steps": result["step"],
                   **{key: result[key] for key in ("planned_steps", "finished", "checkpoint_sha1")}}
        summary["output"] = str(step.output)
    else:
        from fercurate.train.runs import benchmark_table

        summary = {"output": str(step.output),
                   "accuracy": benchmark_table(result)[["training set", "test set", "accuracy"]].to_dict("records")}
    return json.loads(summary_json(summary))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """The record of a recipe's runs on one workspace (see the module docstring)."""

    def __init__(self, workspace: Workspace, recipe: Recipe) -> None:
        self.workspace = workspace
        self.recipe = recipe
        self.path = workspace.root / RECORDS_FOLDER / f"{recipe.name}.json"
        self.steps: list[dict[str, Any]] = self._read()
        self._lock: IO[str] | None = None

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        fix = "remove it: every step of the recipe then runs again"
        try:
            document = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RecipeError(f"the run record {self.path} is damaged ({error})", fix) from None
        if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT:
            raise RecipeError(f"{self.path} is not a fercurate run record ({RECORD_FORMAT})", fix)
        steps = document.get("steps")
        if not isinstance(steps, list) or not all(isinstance(entry, dict) for entry in steps):
            raise RecipeError(f"the run record {self.path} is damaged (its steps are not a list of records)", fix)
        return steps

    def entry(self, number: int) -> dict[str, Any] | None:
        return self.steps[number - 1] if number <= len(self.steps) else None

    def owns(self, output: Path) -> bool:
        """Whether a step of this recipe wrote ``output`` before (so redoing it may replace it)."""
        return any(str(output) in (entry.get("outputs") or ()) for entry in self.steps)

    def last_state(self) -> str | None:
        """The workspace fingerprint the last finished step left (None before any)."""
        done = [entry for entry in self.steps if entry.get("status") == "done"]
        return done[-1].get("workspace_after") if done else None

    def interrupted(self) -> dict[str, Any] | None:
        """The step a run stopped in (killed, interrupted or failed), if the last run did not finish."""
        return next((entry for entry in self.steps if entry.get("status") in ("started", "failed", "interrupted")),
                    None)

    def hold(self) -> None:
        """Take the record's lock, once the workspace exists: one run of a recipe per workspace at a time."""
        if self._lock is not None or not self.workspace.root.is_dir():
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            handle = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115 - held until release()
        except OSError as error:
            raise WorkspaceError(f"cannot record the run in {self.path.parent} ({error.strerror})",
                                 "make the workspace writable") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RecipeError(f"another `fercurate run` of {self.recipe.name} is using {self.workspace.root}",
                              "wait for it to finish") from None
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def save(self) -> None:
        """Write the record atomically (not before the workspace exists: a failed first ingest leaves none)."""
        if not self.workspace.root.is_dir():
            return
        self.hold()
        document = {"format": RECORD_FORMAT, "recipe": self.recipe.name,
                    "recipe_path": str(self.recipe.path) if self.recipe.path else None,
                    "workspace": str(self.workspace.root), "updated": _now(), "steps": self.steps}
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps(document, indent=2) + "\n")

    def start(self, planned: PlannedStep, workspace_before: str) -> None:
        """Record that ``planned`` starts; the recorded steps after it are outdated from now on."""
        entry = {"number": planned.number, "kind": planned.kind, "status": "started", "action": planned.action,
                 "reason": planned.reason, "options": step_options(planned.recipe_step),
                 "inputs": {"workspace": workspace_before, "source": planned.source},
                 "outputs": [str(path) for path in step_outputs(planned.step, self.workspace)],
                 "started": _now()}
        earlier = self.entry(planned.number)
        if earlier is not None and earlier.get("kind") == planned.kind:  # keep what it wrote before: it owns it
            entry["outputs"] = list(dict.fromkeys([*entry["outputs"], *(earlier.get("outputs") or ())]))
        while len(self.steps) < planned.number:
            self.steps.append({"number": len(self.steps) + 1, "status": "outdated"})
        self.steps[planned.number - 1] = entry
        for later in self.steps[planned.number:]:
            later["status"] = "outdated"
        self.save()

    def finish(self, planned: PlannedStep, workspace_after: str, summary: dict[str, Any], seconds: float) -> None:
        entry = self.steps[planned.number - 1]
        entry.update(status="done", finished=_now(), seconds=round(seconds, 3), workspace_after=workspace_after,
                     result=summary)
        entry.pop("error", None)
        self.save()

    def fail(self, planned: PlannedStep, error: BaseException) -> None:
        entry = self.steps[planned.number - 1]
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        entry.update(status="interrupted" if interrupted else "failed", finished=_now(),
                     error=str(error) or type(error).__name__)
        try:
            self.save()
        except (OSError, FercurateError):
            pass  # the step's own error is the one to report


@dataclass
class PlannedStep:
    """One step of a run's plan: what it does (``run`` a new step, ``redo`` one that ran before,
    ``resume`` an interrupted training from its checkpoint, ``skip`` an unchanged one) and why.

    ``step`` is what runs: the recipe's step with ``overwrite`` / ``resume`` set as the plan decided;
    ``removes`` are earlier checkpoints of this recipe that a fresh redo deletes first."""

    number: int
    recipe_step: Step
    step: Step
    action: Action
    reason: str
    earlier: dict[str, Any] | None = None
    source: str | None = None
    removes: list[Path] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.recipe_step.kind

    @property
    def runs(self) -> bool:
        return self.action != "skip"

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"step": self.number, "kind": self.kind, "action": self.action, "reason": self.reason}
        if self.removes:
            summary["removes"] = [str(path) for path in self.removes]
        return summary


@dataclass
class StepOutcome:
    """What one step of a run did: its plan, the summary (kept in the record; a skipped step's is
    the one recorded when it last ran) and, for a step that ran, the stage's own result."""

    planned: PlannedStep
    summary: dict[str, Any]
    result: Any = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.planned.to_dict(), **{key: value for key, value in self.summary.items()
                                             if key not in ("step", "kind", "action", "reason")}}


def _forced_numbers(recipe: Recipe, force: Iterable[str | int]) -> set[int]:
    """The step numbers ``force`` names (1-based numbers, or kinds: every step of that kind)."""
    numbers: set[int] = set()
    for item in force:
        text = str(item).strip()
        if text.isdigit():
            if not 1 <= int(text) <= len(recipe.steps):
                raise RecipeError(f"--force {text}: the recipe has steps 1 to {len(recipe.steps)}")
            numbers.add(int(text))
            continue
        matching = {number for number, step in enumerate(recipe.steps, start=1) if step.kind == text}
        if not matching:
            kinds = ", ".join(dict.fromkeys(step.kind for step in recipe.steps))
            raise RecipeError(f"--force {text}: the recipe has no {text} step", f"give a step number or one of {kinds}")
        numbers |= matching
    return numbers


def _changed_options(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The options (top-level keys) that differ between two runs of a step."""
    return sorted(key for key in {*earlier, *now} if earlier.get(key) != now.get(key))


def _check_step(number: int, step: Step, action: Action, effective: Step, workspace: Workspace,
                owned: bool, produced: list[Path]) -> None:
    """Refuse, before anything runs, what would make a step fail later: an unknown source option, a
    missing source, a device this machine lacks, a bad balance target, an output folder the step
    may not write."""
    where = f"step {number} ({step.kind})"
    try:
        if isinstance(step, IngestStep):
            spec = SOURCES[step.source]
            unknown = sorted(set(step.options) - set(spec.option_names()))
            if unknown:
                raise RecipeError(f"{where}: source {step.source} does not take {', '.join(unknown)}",
                                  f"it takes {', '.join(spec.option_names()) or 'no options'}")
            if step.path is None and spec.needs_path:
                raise RecipeError(f"{where}: give the path of the {step.source} download (path: ...)")
            if (action != "skip" and step.path is not None and step.source != "hub" and not step.path.exists()
                    and not any(step.path.is_relative_to(path) for path in produced)):
                raise RecipeError(f"{where}: {step.path} does not exist", "fix the path or set its variable")
        elif isinstance(step, TrainStep):
            resolve_device(step.device)
            if step.balance is not None:
                parse_balance(step.balance)
            assert isinstance(effective, TrainStep)
            last = step.output / "last.pt"
            if action != "skip" and not owned and not effective.resume and last.exists():
                raise TrainError(f"{where}: {last} exists (a run this recipe did not make)",
                                 "add `resume: true` to the step to continue it, or choose another output")
        elif isinstance(step, GeneratorStep):
            resolve_device(step.config().device)
            assert isinstance(effective, GeneratorStep)
            if action != "skip" and not owned and not effective.resume and (step.output / "last.pt").exists():
                raise TrainError(f"{where}: {step.output / 'last.pt'} exists (a run this recipe did not make)",
                                 "add `resume: true` to the step to continue it, or choose another output")
        elif isinstance(step, SynthesizeStep):
            absent = [path for path in step.generators if not path.exists() and path not in produced]
            if action != "skip" and absent:
                raise RecipeError(f"{where}: no generator at {absent[0]}",
                                  "train it first (a `generator` step before this one, or `fercurate generator train`)")
        elif isinstance(step, BenchmarkStep):
            resolve_device(step.train.device)
            replaced = step.overwrite and (step.output / "benchmark.json").is_file()
            if action != "skip" and not owned and not replaced and step.output.is_dir() \
                    and next(step.output.rglob("last.pt"), None) is not None:
                raise TrainError(f"{where}: {step.output} holds checkpoints of a benchmark this recipe did not make",
                                 "add `overwrite: true` to the step, or choose another output")
        elif isinstance(step, ExportStep) and action != "skip":
            assert isinstance(effective, ExportStep)
            check_output_folder(workspace, step.output, effective.overwrite)
    except RecipeError:
        raise
    except FercurateError as error:
        message = error.message if error.message.startswith(where) else f"{where}: {error.message}"
        raise RecipeError(message, error.fix) from None


def plan_recipe(recipe: Recipe, workspace: Workspace | None = None, force: Iterable[str | int] = ()
                ) -> list[PlannedStep]:
    """What :func:`run_recipe` would do, step by step, and why (see the module docstring); checks
    what can be checked before anything runs. Reads only: changes nothing."""
    space = workspace if workspace is not None else Workspace(recipe.workspace)
    return _plan(recipe, space, RunRecord(space, recipe), force)


def _plan(recipe: Recipe, space: Workspace, record: RunRecord, force: Iterable[str | int]) -> list[PlannedStep]:
    forced = _forced_numbers(recipe, force)
    now = workspace_fingerprint(space)
    last_state, stopped = record.last_state(), record.interrupted()
    changed_outside = last_state is not None and stopped is None and now != last_state
    plan: list[PlannedStep] = []
    earlier_run: int | None = None  # the first step that runs: every later one runs too
    produced: list[Path] = []
    for number, step in enumerate(recipe.steps, start=1):
        entry = record.entry(number)
        other_kind = entry is not None and entry.get("kind") != step.kind
        entry = None if other_kind else entry
        options = step_options(step)
        source = source_fingerprint(step) if isinstance(step, IngestStep) else None
        status = entry.get("status") if entry is not None else None
        differing = _changed_options(entry.get("options") or {}, options) if entry is not None else []
        recorded_source = (entry.get("inputs") or {}).get("source") if entry is not None else None
        source_changed = isinstance(step, IngestStep) and source not in (recorded_source, "missing")
        resumable = (isinstance(step, _RESUMING) and status in _STOPPED and set(differing) <= _RESUMABLE
                     and ((entry or {}).get("inputs") or {}).get("workspace") == now
                     and (step.output / "last.pt").is_file())
        differing = [key for key in differing if key not in _NOT_COMPARED]
        missing = [path for path in step_outputs(step, space)
                   if not (path / _OUTPUT_MARKERS[step.kind] if step.kind in _OUTPUT_MARKERS else path).exists()]
        again: Action = "redo" if entry is not None else "run"
        action: Action
        if earlier_run is not None:
            action, reason = again, f"step {earlier_run} runs before it" if entry is not None else "not run yet"
        elif number in forced:
            action, reason = again, "forced"
        elif entry is None:
            action, reason = "run", "the recipe's steps changed here" if other_kind else "not run yet"
        elif resumable:
            action, reason = "resume", f"{_STOPPED[status]}; continues from {step.output / 'last.pt'}"
        elif status in _STOPPED:
            action, reason = "redo", _STOPPED[status] + (f": {entry['error']}" if entry.get("error") else "")
        elif status != "done":
            action, reason = "redo", "an earlier step was redone after it ran"
        elif differing:
            action, reason = "redo", f"options changed: {', '.join(differing)}"
        elif source_changed:
            action, reason = "redo", f"its source {step.path} changed"  # type: ignore[union-attr]
        elif changed_outside:
            action, reason = "redo", "the workspace changed since this recipe last ran"
        elif missing:
            action, reason = "redo", f"its output {missing[0]} is missing"
        else:
            action, reason = "skip", "unchanged"
            if isinstance(step, IngestStep) and source == "missing":
                reason += f" ({step.path} is gone; the workspace keeps what it ingested)"
        if action != "skip" and earlier_run is None:
            earlier_run = number
        owned = record.owns(step_outputs(step, space)[0])
        effective: Step = step
        removes: list[Path] = []
        if isinstance(step, ExportStep) and action != "skip" and owned and step.output.exists():
            effective = step.model_copy(update={"overwrite": True})
        elif isinstance(step, _RESUMING) and action == "resume":
            effective = step.model_copy(update={"resume": True})
        elif isinstance(step, _RESUMING) and action != "skip" and owned:
            removes = [path for name in _CHECKPOINTS if (path := step.output / name).is_file()]
        elif isinstance(step, BenchmarkStep) and action != "skip" and owned and step.output.is_dir():
            removes = sorted(path for name in _CHECKPOINTS for path in step.output.rglob(name))
        if removes:
            reason += "; starts over (removes its earlier checkpoints)"
        _check_step(number, step, action, effective, space, owned, produced)
        produced += step_outputs(step, space) if not isinstance(step, (IngestStep, AuditStep, SynthesizeStep)) else []
        plan.append(PlannedStep(number, step, effective, action, reason, entry, source, removes))
    return plan


Execute = Callable[[PlannedStep, Workspace], Any]


def _run_planned(planned: PlannedStep, workspace: Workspace) -> Any:
    return run_step(planned.step, workspace)


@contextmanager
def _held(space: Workspace, recipe: Recipe) -> Iterator[RunRecord]:
    """The recipe's run record, locked (and read) before the run is planned."""
    record = RunRecord(space, recipe)
    try:
        record.hold()
        record.steps = record._read()  # as it is now that no other run of the recipe can write it
        yield record
    finally:
        record.release()


def run_recipe(recipe: Recipe, workspace: Workspace | None = None, force: Iterable[str | int] = (),
               execute: Execute | None = None, on_start: Callable[[PlannedStep], None] | None = None,
               on_finish: Callable[[StepOutcome], None] | None = None) -> list[StepOutcome]:
    """Run a recipe's steps in order on its workspace (or ``workspace``), skipping those unchanged
    since they last ran and resuming an interrupted training, and record each step in the
    workspace's run record (see the module docstring). ``force`` names steps to redo (numbers from
    1, or kinds). ``execute(planned, workspace)`` runs one step (default: :func:`run_step` on
    ``planned.step``; the command line passes one with progress bars); ``on_start`` and
    ``on_finish`` are told of each step as it starts and ends, skipped ones included."""
    space = workspace if workspace is not None else Workspace(recipe.workspace)
    execute = execute or _run_planned
    outcomes: list[StepOutcome] = []
    with _held(space, recipe) as record:
        for planned in _plan(recipe, space, record, force):
            if on_start is not None:
                on_start(planned)
            if not planned.runs:
                outcome = StepOutcome(planned, dict((planned.earlier or {}).get("result") or {}))
            else:
                started = time.perf_counter()
                record.start(planned, workspace_fingerprint(space))
                for path in planned.removes:
                    path.unlink(missing_ok=True)
                try:
                    result = execute(planned, space)
                except BaseException as error:
                    record.fail(planned, error)
                    raise
                seconds = time.perf_counter() - started
                summary = step_summary(planned.step, result)
                record.finish(planned, workspace_fingerprint(space), summary, seconds)
                outcome = StepOutcome(planned, summary, result, seconds)
            outcomes.append(outcome)
            if on_finish is not None:
                on_finish(outcome)
    return outcomes
