"""Pipelines as YAML recipes: a workspace and the steps to run on it, in order.

    workspace: fercurate-workspace        # relative paths resolve against the recipe's folder
    steps:
      - ingest: {source: fer2013, path: data/fer2013.csv}
      - ingest: {source: ferplus, path: data/fer2013new.csv, options: {label_mode: majority}}
      - audit: {near_duplicate_distance: 4, fiftyone: true}

Each step is validated before anything runs, so a typo fails at once with the step's number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fercurate.errors import RecipeError
from fercurate.options import option_error
from fercurate.audit.result import AuditResult
from fercurate.audit.run import AuditOptions, audit_workspace
from fercurate.sources import SOURCES, Source, open_source
from fercurate.workspace import IngestReport, Workspace


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
        return AuditOptions.model_validate(self.model_dump(exclude={"kind", "fiftyone"}))


Step = IngestStep | AuditStep


class Recipe(BaseModel):
    """A workspace and the steps to run on it."""

    model_config = ConfigDict(extra="forbid")
    workspace: Path
    steps: list[Step]


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
    steps = []
    for number, entry in enumerate(document.get("steps") or [], start=1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecipeError(f"step {number} of {path.name} must be one mapping like '- ingest: {{...}}'")
        (kind, body), = entry.items()
        model = {"ingest": IngestStep, "audit": AuditStep}.get(kind)
        if model is None:
            raise RecipeError(f"step {number} of {path.name}: unknown step {kind!r} (use ingest or audit)")
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
        elif step.demographics is not None:
            step.demographics = resolve(step.demographics)
    workspace = resolve(Path(document["workspace"])) if document.get("workspace") else None
    if workspace is None:
        raise RecipeError(f"{path.name} names no workspace")
    return Recipe(workspace=workspace, steps=steps)


def run_step(step: Step, workspace: Workspace, **progress: Any) -> IngestReport | AuditResult:
    """Run one step on the workspace (``progress`` is passed to the stage's own function)."""
    if isinstance(step, IngestStep):
        return workspace.ingest(step.reader(workspace), **progress)
    result = audit_workspace(workspace, step.audit_options(), **progress)
    if step.fiftyone:
        from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone

        sync_audit_to_fiftyone(workspace)
    return result
