"""fercurate: curate facial-expression-recognition datasets.

Everything the command line does is importable from here::

    from fercurate import Workspace, audit_workspace, export_dataset, open_source
    workspace = Workspace("ws")
    workspace.ingest(open_source("fer2013", "fer2013.csv"))
    audit_workspace(workspace)
    export_dataset(workspace, "out")

Names are loaded on first use, so importing fercurate stays cheap. ``fercurate.train`` is the
training package; its training function is ``fercurate.train_classifier`` (one name, one thing).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CANONICAL_LABELS": "fercurate.schema",
    "ROW_SCHEMA": "fercurate.schema",
    "SOURCE_LABEL_MAPS": "fercurate.schema",
    "SchemaError": "fercurate.schema",
    "canonical_label": "fercurate.schema",
    "validate_table": "fercurate.schema",
    "SOURCES": "fercurate.sources",
    "Source": "fercurate.sources",
    "SourceError": "fercurate.sources",
    "open_source": "fercurate.sources",
    "FramePolicy": "fercurate.sources",
    "open_demo": "fercurate.sources.demo",
    "draw_demo_faces": "fercurate.sources.demo",
    "write_demo_csv": "fercurate.sources.demo",
    "Workspace": "fercurate.workspace",
    "WorkspaceLocked": "fercurate.workspace",
    "IngestReport": "fercurate.workspace",
    "face_filepaths": "fercurate.schema",
    "AlignOptions": "fercurate.align",
    "AlignReport": "fercurate.align",
    "align_workspace": "fercurate.align",
    "align_face": "fercurate.align",
    "CANONICAL_EYES": "fercurate.align",
    "AuditOptions": "fercurate.audit.run",
    "AuditResult": "fercurate.audit.result",
    "audit_workspace": "fercurate.audit.run",
    "prepare_fiftyone_database": "fercurate.audit.fiftyone_database",
    "sync_to_fiftyone": "fercurate.audit.fiftyone_sync",
    "sync_audit_to_fiftyone": "fercurate.audit.fiftyone_sync",
    "launch_app": "fercurate.audit.fiftyone_app",
    "find_label_issues": "fercurate.audit.label_noise",
    "ferplus_agreement": "fercurate.audit.label_noise",
    "cnn_out_of_fold_probabilities": "fercurate.audit.noise_cnn",
    "embedding_uniqueness": "fercurate.audit.uniqueness",
    "ferplus_face_check": "fercurate.audit.quality",
    "render_page": "fercurate.audit.browser",
    "find_planted": "fercurate.audit.planted",
    "planted_findings": "fercurate.audit.planted",
    "SplitOptions": "fercurate.splits",
    "assign_splits": "fercurate.splits",
    "leakage_groups": "fercurate.splits",
    "leakage_violations": "fercurate.splits",
    "subject_folds": "fercurate.splits",
    "balanced_selection": "fercurate.splits",
    "ExportOptions": "fercurate.export",
    "export_dataset": "fercurate.export",
    "TrainConfig": "fercurate.train",
    "train_classifier": "fercurate.train.loop:train",
    "evaluate": "fercurate.train",
    "train_on_workspace": "fercurate.train.runs",
    "BenchmarkConfig": "fercurate.train.runs",
    "run_benchmark": "fercurate.train.runs",
    "compare_arms": "fercurate.train.runs",
    "paired_bootstrap_difference": "fercurate.train.evaluate",
    "SCHEMA_VERSION": "fercurate.schema",
    "conform_to_schema": "fercurate.schema",
    "OCCLUDERS": "fercurate.synth",
    "plan_rebalance": "fercurate.synth",
    "synthesize": "fercurate.synth",
    "remove_synthetic": "fercurate.synth",
    "make_occluded_test_set": "fercurate.synth",
    "contact_sheet": "fercurate.synth",
    "SynthesizeOptions": "fercurate.synth",
    "REBALANCE_DROP_FLAG": "fercurate.splits",
    "GENERATORS": "fercurate.synth.generators",
    "generator_config": "fercurate.synth.generators",
    "train_generator": "fercurate.synth.generators",
    "load_generator": "fercurate.synth.generators",
    "write_samples": "fercurate.synth.generators",
    "quality_report": "fercurate.train.generator_quality",
    "report_generator": "fercurate.train.generator_quality",
    "pull_reviews": "fercurate.audit.review",
    "load_recipe": "fercurate.recipes",
    "run_step": "fercurate.recipes",
    "plan_recipe": "fercurate.recipes",
    "run_recipe": "fercurate.recipes",
    "PlannedStep": "fercurate.recipes",
    "StepOutcome": "fercurate.recipes",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fercurate' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value
