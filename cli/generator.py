"""``fercurate generator train|sample|report``: train a face generator on a workspace's training
faces, sample from it, and measure its samples. Registered in :mod:`fercurate_cli.main`; errors
follow main's single path (commands catch nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fercurate.errors import OptionError
from fercurate_cli.progress import LoggedProgress

generator_app = typer.Typer(help="Face generators fercurate trains (cgan, ddpm): train, sample, report.",
                            no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

#: The registered kinds (fercurate.synth.generators.GENERATORS), as text so that ``--help`` need not
#: import torch; tests/test_generators.py checks that it names exactly the registered ones.
GENERATOR_KINDS = ("cgan", "ddpm")

WorkspaceOption = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Workspace folder [default: $FERCURATE_WORKSPACE or ./fercurate-workspace]"),
]


def _settings(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values read as JSON where they parse: numbers, booleans, lists)."""
    settings: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--set {pair!r} is not key=value", "e.g. --set guidance=3 --set z_dim=64")
        try:
            settings[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip().replace("-", "_")] = value
    return settings


@generator_app.command()
def train(
    kind: Annotated[str, typer.Argument(help=f"Generator kind: {' or '.join(GENERATOR_KINDS)}.")],
    run: Annotated[Path, typer.Argument(help="Run folder (checkpoints, sample grids, train.json).")],
    workspace: WorkspaceOption = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Time budget; the step plan is fitted to it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps when the budget allows [default: 20000].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Faces per step [default: 64 on CPU, 256 on CUDA].")] = None,
    image_size: Annotated[int, typer.Option(help="Faces are resized to this square size.")] = 48,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:N.")] = "auto",
    mixed_precision: Annotated[bool, typer.Option(help="bfloat16 autocast (faster on CPU and GPU).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and noise.")] = 0,
    strategy: Annotated[str, typer.Option(help="Split strategy whose training faces it learns: official or grouped.")] = "official",
    source: Annotated[Optional[list[str]], typer.Option(
        help="Learn from the training faces of this source only (repeatable) [default: all sources].")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="A kind's own option as key=value (repeatable), e.g. --set guidance=3 --set lr=1e-4.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in RUN from its last checkpoint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON.")] = False,
) -> None:
    """Train a class-conditional generator on the workspace's real training faces."""
    from fercurate.options import validated
    from fercurate.splits import SplitOptions
    from fercurate.synth.generators import generator_config, train_generator
    from fercurate.workspace import Workspace

    split = validated(SplitOptions, "split option", strategy=strategy, seed=seed)
    values = {"image_size": image_size, "device": device, "mixed_precision": mixed_precision, "seed": seed,
              **({"max_minutes": max_minutes} if max_minutes is not None else {}),
              **({"steps": steps} if steps is not None else {}),
              **({"batch_size": batch_size} if batch_size is not None else {}), **_settings(set_)}
    config = generator_config(kind, **values)
    with _TrainingBar(as_json) as progress:
        summary = train_generator(Workspace(workspace), run, config, split=split, sources=source, resume=resume,
                                  progress=progress)
    if as_json:
        print(json.dumps({key: value for key, value in summary.items() if key != "history"}, indent=2))
        return
    table = Table(title=f"{kind} trained into {run}", title_justify="left", show_header=False)
    for key in ("step", "planned_steps", "finished", "training_faces", "session_seconds", "steps_per_s", "device",
                "autocast", "checkpoint_sha1"):
        table.add_row(key.replace("_", " "), str(summary[key]))
    table.add_row("parameters", ", ".join(f"{k} {v:,}" for k, v in summary["parameters"].items()))
    table.add_row("last losses", ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items() if k != "step"))
    console.print(table)
    console.print(f"sample grid: {run / 'samples.png'} (one row per class: {', '.join(summary['class_names'])})")
    if not summary["finished"]:
        console.print(f"stopped at step {summary['step']} of {summary['planned_steps']}: continue with "
                      f"`fercurate generator train {kind} {run} -w WS --resume`")


class _TrainingBar:
    """A rich progress bar with the losses, fed by the trainer's callback (none with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.bar = LoggedProgress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.fields[losses]}"), console=errors)
        self.bar.__enter__()
        self.task = self.bar.add_task("training", total=None, losses="")

        def update(event: Any) -> None:
            losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items() if k != "step")
            self.bar.update(self.task, completed=event.step, total=event.steps_total,
                            losses=f"{losses}  {event.images_per_s:.0f} faces/s" if event.images_per_s else losses)
        return update

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.__exit__(*exc)


@generator_app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="Run folder of `fercurate generator train` (or its generator.pt).")],
    out: Annotated[Path, typer.Option(help="Folder for the faces: OUT/<label>/<seed>.png and OUT/grid.png.")],
    per_class: Annotated[int, typer.Option(min=1, help="Faces per class.")] = 16,
    label: Annotated[Optional[list[str]], typer.Option(help="Only these classes (repeatable) [default: all].")] = None,
    seed: Annotated[int, typer.Option(help="First seed; face i of a class uses seed + i.")] = 0,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (ddpm).")] = None,
    sampling_steps: Annotated[Optional[int], typer.Option(help="Denoising steps (ddpm).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Sample faces of every class from a trained generator into image files and a grid."""
    from fercurate.synth.generators import load_generator, write_samples

    generator = load_generator(run, device=device)
    written = write_samples(generator, out, per_class=per_class, labels=label, first_seed=seed, guidance=guidance,
                            steps=sampling_steps)
    if as_json:
        print(json.dumps({"generator": generator.describe(), "written": written}, indent=2))
        return
    console.print(f"wrote {sum(written['per_class'].values())} faces of {len(written['per_class'])} classes "
                  f"from {generator.kind} step {generator.step} into {out}; grid: {written['grid']}")


@generator_app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run folder of `fercurate generator train`.")],
    classifier: Annotated[Path, typer.Option(help="best.pt of a `fercurate train` run on real faces (the judge).")],
    workspace: WorkspaceOption = None,
    per_class: Annotated[int, typer.Option(min=2, help="Generated faces measured per class.")] = 500,
    seed: Annotated[int, typer.Option(help="First seed of the measured faces.")] = 0,
    real_per_class: Annotated[int, typer.Option(
        min=2, help="Real training faces per class the classifier describes (memorisation searches all).")] = 2000,
    strategy: Annotated[str, typer.Option(help="Split strategy of the held-apart real faces: official or grouped.")] = "official",
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (ddpm).")] = None,
    sampling_steps: Annotated[Optional[int], typer.Option(help="Denoising steps (ddpm).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure a generator's faces against real ones (classification accuracy, Frechet distance,
    precision/recall, memorisation, diversity; real held-apart faces as the ceiling) and write
    quality.json, quality.md and quality-samples.png into RUN."""
    from fercurate.options import validated
    from fercurate.splits import SplitOptions
    from fercurate.train.generator_quality import report_generator
    from fercurate.workspace import Workspace

    split = validated(SplitOptions, "split option", strategy=strategy)
    quality = report_generator(Workspace(workspace), run, classifier=classifier, per_class=per_class, first_seed=seed,
                               split=split, guidance=guidance, steps=sampling_steps, device=device,
                               real_per_class=real_per_class)
    if as_json:
        print(json.dumps(quality.to_dict(), indent=2))
        return
    console.print(quality.to_markdown())
    console.print(f"written: {run / 'quality.md'}, {run / 'quality.json'}, {run / 'quality-samples.png'}")
