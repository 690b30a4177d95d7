"""Pipelines as YAML recipes: a workspace and the steps to run on it, in order.

    workspace: fercurate-workspace        # relative paths resolve against the recipe's folder
    steps:
      - ingest: {source: fer2013, path: data/fer2013.csv}
      - ingest: {source: ferplus, path: data/fer2013new.csv, options: {label_mode: majority}}
      - audit: {near_duplicate_distance: 4, fiftyone: true}
      - synthesize: {target: "min:500", occluded_test: true}
      - export: {output: out, formats: [imagefolder, manifest]}
      - train: {output: runs/vgg, model: vgg, max_minutes: 30}
      - benchmark: {output: runs/bench, arms: [original, augmented], seeds: [0, 1, 2]}

String values may name environment variables, ``${VAR}`` or ``${VAR:-default}`` (e.g.
``path: ${FER2013_CSV}``, ``output: ${FERCURATE_OUTPUT:-out}/export``); an unset variable without a
default is refused before anything runs.

Every step kind is a model in :data:`STEPS` that extends the library's own options (``AuditOptions``,
``SynthesizeOptions``, ``ExportOptions``, ``TrainConfig``, ``BenchmarkConfig``): one definition of each
option for the library, the CLI and recipes. Each step is validated before anything runs, so a typo
fails at once with the step's number and the key.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fercurate.errors import RecipeError
from fercurate.options import option_error
from fercurate.audit.result import AuditResult
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.export import ExportOptions, ExportReport, export_dataset
from fercurate.sources import SOURCES, Source, open_source
from fercurate.splits import SplitOptions
from fercurate.synth.run import SynthesizeOptions, SynthesizeReport, make_occluded_test_set, synthesize
from fercurate.train.loop import TrainConfig
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

    def reader(self, workspace: Workspace) -> Source:
        """The source reader this step describes."""
        return open_source(self.source, self.path, workspace_root=workspace.root, **self.options)


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
STEPS: dict[str, type[BaseModel]] = {"ingest": IngestStep, "audit": AuditStep, "synthesize": SynthesizeStep,
                                     "export": ExportStep, "train": TrainStep, "benchmark": BenchmarkStep}
Step = IngestStep | AuditStep | SynthesizeStep | ExportStep | TrainStep | BenchmarkStep


class Recipe(BaseModel):
    """A workspace and the steps to run on it."""

    model_config = ConfigDict(extra="forbid")
    workspace: Path
    steps: list[Step]


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
        elif isinstance(step, SynthesizeStep) and step.filter.judge is not None:
            step.filter.judge = resolve(step.filter.judge)
        elif isinstance(step, (ExportStep, TrainStep, BenchmarkStep)):
            step.output = resolve(step.output)
    workspace = resolve(Path(document["workspace"])) if document.get("workspace") else None
    if workspace is None:
        raise RecipeError(f"{path.name} names no workspace")
    return Recipe(workspace=workspace, steps=steps)


def run_step(step: Step, workspace: Workspace, **progress: Any
             ) -> IngestReport | AuditResult | SynthesizeReport | ExportReport | dict[str, Any]:
    """Run one step on the workspace (``progress`` is passed to the stage's own function)."""
    if isinstance(step, IngestStep):
        return workspace.ingest(step.reader(workspace), **progress)
    if isinstance(step, SynthesizeStep):
        report = synthesize(workspace, step.synthesize_options(), **progress)
        if step.occluded_test:
            make_occluded_test_set(workspace, split=step.split, **progress)
        return report
    if isinstance(step, ExportStep):
        return export_dataset(workspace, step.output, step.export_options())
    if isinstance(step, TrainStep):
        return train_on_workspace(workspace, step.train_config(), step.output, step.split, step.sources,
                                  step.balance, step.resume, step.tta_flip, **progress)
    if isinstance(step, BenchmarkStep):
        if step.overwrite and (step.output / "benchmark.json").is_file():
            shutil.rmtree(step.output)
        return run_benchmark(workspace, step.benchmark_config(), step.output, **progress)
    result = audit_workspace(workspace, step.audit_options(), **progress)
    if step.fiftyone:
        from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone

        sync_audit_to_fiftyone(workspace)
    return result
