"""The command line: the demo by default, JSON output, clear errors, and a fast start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from fercurate_cli.main import app

runner = CliRunner()


def test_ingest_without_arguments_ingests_the_demo(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert "rows of this run by label and split" in result.output
    assert "demo" in result.output and "280" in result.output
    assert "ingest demo 280/280" in result.output  # the bar's last line (CliRunner's stderr is no terminal): the
    # items read, though the CSV's size gave an estimate of 282


def test_json_output_is_machine_readable_and_rerun_adds_nothing(tmp_path: Path) -> None:
    arguments = ["ingest", "demo", "--workspace", str(tmp_path / "ws"), "--json"]
    first = json.loads(runner.invoke(app, arguments).stdout)
    second = json.loads(runner.invoke(app, arguments).stdout)
    assert first["rows_added"] == 280 and first["images_written"] == 278
    assert (second["rows_added"], second["images_written"], second["rows_replaced"]) == (0, 0, 280)
    assert first["rows_by_split_and_label"]["Training"]["happiness"] == 32
    assert first["source"] == "demo" and first["skips"] == []


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["ingest", "jaffe", str(tmp_path / "nowhere"), "-w", str(tmp_path / "ws")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output and "Traceback" not in missing.output
    no_path = runner.invoke(app, ["ingest", "ckplus", "-w", str(tmp_path / "ws")])
    assert no_path.exit_code == 2 and "fercurate ingest ckplus PATH" in no_path.output
    unknown = runner.invoke(app, ["ingest", "affectnet", str(tmp_path), "-w", str(tmp_path / "ws")])
    assert unknown.exit_code == 2 and "unknown source 'affectnet'" in unknown.output


def test_workspace_from_environment(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--json"], env={"FERCURATE_WORKSPACE": str(tmp_path / "env-ws")})
    assert result.exit_code == 0
    assert (tmp_path / "env-ws" / "manifest.parquet").is_file()


def test_help_and_ingest_do_not_import_heavy_libraries() -> None:
    probe = ("import sys; import fercurate_cli.main, fercurate.sources, fercurate.workspace; "
             "print(sorted(m for m in ('torch', 'fiftyone', 'diffusers', 'datasets', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_ingest_help_names_exactly_the_registered_sources() -> None:
    from fercurate.sources import SOURCES
    from fercurate_cli.main import SOURCE_HELP

    named = set(re.findall(r"(?:^|[:,] |, )([a-z0-9]+)(?= \(|,|\.$)", " ".join(SOURCE_HELP.split())))
    assert named == set(SOURCES)


def test_progress_bars_log_lines_where_stderr_is_not_a_terminal() -> None:
    import io

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from fercurate_cli.progress import LoggedProgress

    def lines(log_every_s: float, terminal: bool) -> list[str]:
        sink = io.StringIO()
        console = Console(file=sink, force_terminal=terminal, width=120)
        with LoggedProgress(TextColumn("fill {task.description}"), BarColumn(), MofNCompleteColumn(),
                            console=console, log_every_s=log_every_s) as progress:
            task = progress.add_task("disgust", total=3)
            for _ in range(4):  # the fourth advance passes the total: the task logged its end already
                progress.advance(task)
            unknown = progress.add_task("fear", total=None)
            progress.advance(unknown, 5)
        return [line for line in sink.getvalue().splitlines() if "fill " in line]

    assert lines(0, terminal=False) == ["fill disgust 1/3", "fill disgust 2/3", "fill disgust 3/3",
                                        "fill fear 5/?", "fill fear 5/?"]  # the last when the bar closes
    assert lines(3600, terminal=False) == ["fill disgust 3/3", "fill fear 5/?"]  # only where each ended
    drawn = lines(0, terminal=True)
    assert drawn and all("━" in line for line in drawn)  # a terminal gets the live bar only, no log lines
