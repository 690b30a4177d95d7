"""``fercurate review push|pull``: put the latest audit in front of reviewers, and bring their
decisions (tags and edited labels in the FiftyOne App) back into the workspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

review_app = typer.Typer(help="Review in the FiftyOne App: push the audit to reviewers, pull their decisions.",
                         no_args_is_help=True)
console = Console()

WorkspaceOption = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Workspace folder [default: $FERCURATE_WORKSPACE or ./fercurate-workspace]"),
]
DatasetOption = Annotated[Optional[str], typer.Option(help="FiftyOne dataset [default: fercurate-<workspace name>].")]


@review_app.command()
def push(workspace: WorkspaceOption = None, dataset: DatasetOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Sync the workspace and its latest audit into FiftyOne (decisions not yet pulled are kept)."""
    from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone
    from fercurate.workspace import Workspace

    synced = sync_audit_to_fiftyone(Workspace(workspace), name=dataset)
    summary = {"dataset": synced.name, "samples": len(synced), "saved_views": synced.list_saved_views()}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"FiftyOne dataset [bold]{synced.name}[/]: {len(synced)} samples. In the App, tag faces "
                  "review:relabel:<emotion>, review:drop or review:ok (or edit the label), then "
                  "`fercurate review pull`.")


@review_app.command()
def pull(workspace: WorkspaceOption = None, dataset: DatasetOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Bring the reviewers' decisions into the workspace: relabels and drops that export and train honour."""
    from fercurate.audit.review import pull_reviews
    from fercurate.workspace import Workspace

    summary = pull_reviews(Workspace(workspace), name=dataset)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"review decisions ({summary['changed']} new or changed)", title_justify="left")
    table.add_column("decision")
    table.add_column("faces", justify="right")
    for decision, count in summary["decisions"].items():
        table.add_row(decision, str(count))
    for change, count in summary["relabels"].items():
        table.add_row(f"  {change}", str(count))
    console.print(table)
