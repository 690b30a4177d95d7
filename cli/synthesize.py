"""``fercurate synthesize``: plan a rebalance and fill it with occluded augmentations and faces of
trained generators, remove synthetic rows, or write the occluded test set. Registered in :mod:`fercurate_cli.main` with
``app.command()(synthesize)``; errors follow main's single path (commands catch nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fercurate.errors import OptionError
from fercurate.options import validated
from fercurate_cli.progress import LoggedProgress

if TYPE_CHECKING:
    from fercurate.synth.plan import RebalancePlan
    from fercurate.synth.run import Progress, SynthesizeReport

console = Console()
errors = Console(stderr=True)

#: The registered occluders (fercurate.synth.occluders.OCCLUDERS), as text so that ``--help`` need not
#: import albumentations; tests/test_synthesize.py checks that it names exactly the registered ones.
OCCLUDER_NAMES = ("sunglasses", "eyebar", "mask", "hand", "cap", "scarf")


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def synthesize(
    workspace: Annotated[Optional[Path], typer.Option(
        "--workspace", "-w", help="Workspace folder [default: $FERCURATE_WORKSPACE or ./fercurate-workspace]")] = None,
    target: Annotated[str, typer.Option(
        help="uniform, uniform:N, min:N, cap:N or label=share,... (of the training split).")] = "uniform",
    method: Annotated[list[str], typer.Option(
        help="Synthesis method (repeatable): augment, cgan, ddpm, or mix (augment and every --generator); "
             "methods share each class's deficit.")] = ["augment"],  # noqa: B006
    occluders: Annotated[Optional[str], typer.Option(
        help=f"Comma-separated occluders for training faces, of {', '.join(OCCLUDER_NAMES)} "
             "[default: sunglasses,mask,hand,cap].")] = None,
    max_synthetic_share: Annotated[float, typer.Option(help="Most synthetic faces in a class, 0..1.")] = 0.5,
    by: Annotated[Optional[str], typer.Option(
        help="Balance label x value cells of gender or age_group instead of labels (known values only).")] = None,
    judge: Annotated[Optional[Path], typer.Option(help="best.pt of `fercurate train`: keep faces it recognises.")] = None,
    min_judge_probability: Annotated[float, typer.Option(help="Judge's probability of the label to keep a face.")] = 0.2,
    max_hamming: Annotated[int, typer.Option(help="pHash bits within which a face may be a near copy.")] = 4,
    min_pixel_distance: Annotated[float, typer.Option(help="Mean |pixel difference| under which it is one.")] = 3.0,
    strategy: Annotated[str, typer.Option(help="Split strategy, as export's: official or grouped.")] = "official",
    seed: Annotated[int, typer.Option(help="Seed of the faces (and of the split).")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan.")] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Remove synthetic rows instead.")] = False,
    generator: Annotated[Optional[list[str]], typer.Option(
        help="Run folder of a trained generator (`fercurate generator train`; repeatable, one per kind). "
             "With --remove: the generator or family to remove (augment, cgan, augment:occlusion-mask, "
             "occluded-test).")] = None,
    guidance: Annotated[Optional[float], typer.Option(
        help="Classifier-free guidance of a ddpm generator [default: its training config's].")] = None,
    sampling_steps: Annotated[Optional[int], typer.Option(help="Denoising steps of a ddpm generator.")] = None,
    device: Annotated[str, typer.Option(help="Where generators sample: auto, cpu, cuda, cuda:N.")] = "auto",
    occluded_test: Annotated[bool, typer.Option(
        "--occluded-test", help="Write an occluded copy of the test split (flag occluded-test) instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Rebalance the training split with synthetic faces (occlusion augmentations, generated faces),
    with provenance."""
    from fercurate.splits import SplitOptions
    from fercurate.synth.generators import generator_kind
    from fercurate.synth.run import SynthesizeOptions, make_occluded_test_set, remove_synthetic, synthesize as run
    from fercurate.workspace import Workspace

    space = Workspace(workspace)
    split = validated(SplitOptions, "split option", strategy=strategy, seed=seed)
    if remove:
        if generator is not None and len(generator) > 1:
            raise OptionError("--remove takes one --generator family", "run --remove once per family")
        family = generator[0] if generator else None
        removed = remove_synthetic(space, family)
        _print(as_json, {"removed": removed, "generator": family},
               f"removed {removed} {'synthetic rows' if family is None else f'rows of {family}'}")
        return
    runs = [Path(path) for path in generator or ()]
    if "mix" in method:
        method = ["augment", *(generator_kind(run) for run in runs)] + [m for m in method if m not in ("mix", "augment")]
    if occluded_test:
        names = _names(occluders)
        with _ProgressBar(as_json) as progress:
            added = make_occluded_test_set(space, seed=seed, split=split, progress=progress,
                                           **({"occluders": names} if names else {}))
        _print(as_json, {"occluded_test_rows_added": added}, f"added {added} occluded test rows (flag occluded-test)")
        return
    names = _names(occluders)
    options = validated(SynthesizeOptions, "synthesize option", target=target, methods=tuple(method),
                        max_synthetic_share=max_synthetic_share, by=by, seed=seed, split=split, dry_run=dry_run,
                        generators=tuple(runs), guidance=guidance, sampling_steps=sampling_steps, device=device,
                        filter={"judge": judge, "min_judge_probability": min_judge_probability,
                                "max_hamming": max_hamming, "min_pixel_distance": min_pixel_distance},
                        **({"occluders": tuple(names)} if names else {}))
    with _ProgressBar(as_json) as progress:
        report = run(space, options, progress=progress)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    _render(report)


def _print(as_json: bool, payload: dict[str, object], text: str) -> None:
    if as_json:
        print(json.dumps(payload))
    else:
        console.print(text)


class _ProgressBar:
    """A rich progress bar fed by the library's ``(stage, done, total)`` callback (none with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tasks: dict[str, object] = {}

    def __enter__(self) -> Progress | None:
        if self.quiet:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.bar = LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=errors)
        self.bar.__enter__()

        def update(stage: str, done: int, total: int) -> None:
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(stage, total=total)
            self.bar.advance(self.tasks[stage], done)
        return update

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.__exit__(*exc)


def plan_table(plan: RebalancePlan) -> Table:
    """The plan as a table: class, real, dropped, target, new per method, synthetic share."""
    cells = "" if plan.by is None else f", label x {plan.by} cells"
    table = Table(title=f"rebalance plan: --target {plan.target} (training split{cells})", title_justify="left")
    for column in ("label" if plan.by is None else "cell", "real", "dropped", "target",
                   *(f"new ({m})" for m in plan.methods), "synthetic share"):
        table.add_column(column, justify="left" if column in ("label", "cell") else "right")
    for row in plan.classes:
        table.add_row(row.name, str(row.real), str(row.dropped), str(row.target),
                      *(str(row.new.get(m, 0)) for m in plan.methods), f"{row.synthetic_share:.0%}")
    table.add_row("total", str(sum(r.real for r in plan.classes)), str(len(plan.drop_ids)),
                  str(sum(r.target for r in plan.classes)), *(str(sum(plan.new_per_class(m).values()))
                                                               for m in plan.methods), "", style="bold")
    return table


def _render(report: SynthesizeReport) -> None:
    console.print(plan_table(report.plan))
    if report.plan.outside_cells:
        console.print(f"{report.plan.outside_cells} training faces of unknown {report.plan.by} are in no cell: they are "
                      "kept as they are (`fercurate audit --estimate gender,age_group` estimates the values)")
    if report.plan.drop_ids:
        console.print(f"{len(report.plan.drop_ids)} real training rows are above the target"
                      + (": a run flags them rebalance-drop" if report.dry_run else " and are flagged rebalance-drop")
                      + "; export leaves them out (--keep-rebalance-drops keeps them)")
    if report.dry_run:
        console.print("dry run: nothing written")
        return
    if report.rejected:
        rejected = Table(title="rejected by the filter", title_justify="left")
        rejected.add_column("reason")
        rejected.add_column("faces", justify="right")
        for reason, count in report.rejected.most_common():
            rejected.add_row(reason, str(count))
        console.print(rejected)
    added = sum(report.added.values())
    console.print(f"added [bold]{added}[/] synthetic rows ("
                  + (", ".join(f"{m} {n}" for m, n in report.added_by_method.items()) or "none")
                  + f"), {report.already_present} already present, in {report.seconds:.1f} s"
                  + ("; augmentation placement: " + ", ".join(f"{k} {v}" for k, v in report.placements.items())
                     if report.placements else ""))
    for kind, facts in report.generators.items():
        quality = (facts.get("quality") or {}).get("overall")
        console.print(f"{kind}: {facts['run']} (step {facts['step']}, checkpoint {facts['checkpoint_sha1'][:12]})"
                      + (f"; quality: {_quality_line(quality)}" if quality else
                         "; no quality report yet (`fercurate generator report`)"))
    if report.short:
        console.print("[yellow]short of the target after retries:[/] "
                      + ", ".join(f"{label} {count}" for label, count in report.short.items()))


def _quality_line(overall: dict[str, object]) -> str:
    """The overall row of a generator's quality report, in a line."""
    return ", ".join(f"{key.replace('_', ' ')} {value:.3g}" if isinstance(value, float) else f"{key.replace('_', ' ')} {value}"
                     for key, value in overall.items() if value is not None and key != "label")
