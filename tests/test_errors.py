"""One error path: bad input, bad options and damaged workspaces give ``error: <what to do>`` and exit
status 2, never a traceback; anything else is reported as an internal error with a log file.

The table ``CASES`` is the reliability table of the README: each row is something a user can do
wrong and the message fercurate answers with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fercurate.audit.run import summary_json
from fercurate.errors import OptionError
from fercurate.options import BALANCE_LABELS, parse_balance, parse_device
from fercurate.schema import CANONICAL_LABELS
from fercurate.sources.demo import open_demo
from fercurate.workspace import Workspace
from fercurate_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A small demo workspace (8 faces per class) that the cases below copy or read, never change."""
    root = tmp_path_factory.mktemp("errors")
    space = Workspace(root / "ws")
    space.ingest(open_demo(root / "demo", per_class=8))
    return space


def copy_of(demo: Workspace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo.root, tmp_path / "copy"))


def truncated_manifest(demo: Workspace, tmp_path: Path) -> Path:
    root = copy_of(demo, tmp_path)
    data = (root / "manifest.parquet").read_bytes()
    (root / "manifest.parquet").write_bytes(data[: len(data) // 2])
    return root


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not a workspace")
    return tmp_path / "notes.txt"


def garbage_parquet(tmp_path: Path) -> Path:
    (tmp_path / "garbage.parquet").write_text("not parquet at all")
    return tmp_path / "garbage.parquet"


def bad_recipe(tmp_path: Path) -> Path:
    (tmp_path / "r.yaml").write_text("workspace: ws\nsteps:\n  - audit: {noise_model: forest}\n")
    return tmp_path / "r.yaml"


@dataclass
class Case:
    """A command a user may run wrongly: its arguments (built from the demo workspace and a fresh
    folder), the message fercurate must answer with, and what it does, for the README's table."""

    name: str
    arguments: Callable[[Workspace, Path], list[str]]
    message: str
    does: str


HAS_GPU = torch.cuda.is_available()
CASES = [
    Case("--workspace is a file", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(a_file(tmp))],
         "is a file, not a folder", "refuses: give --workspace a folder"),
    Case("audit of a missing workspace", lambda ws, tmp: ["audit", "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    Case("export of a missing workspace", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    Case("train on a missing workspace", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(tmp / "none")],
         "there is no workspace at", "refuses and creates nothing"),
    Case("truncated manifest.parquet (audit)", lambda ws, tmp: ["audit", "-w", str(truncated_manifest(ws, tmp))],
         "manifest.parquet is damaged or truncated", "names the file; restore it or re-ingest"),
    Case("truncated manifest.parquet (export)",
         lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(truncated_manifest(ws, tmp))],
         "manifest.parquet is damaged or truncated", "names the file; restore it or re-ingest"),
    Case("train --device cuda without a GPU", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                                "--device", "cuda"],
         "asks for a CUDA GPU", "refuses before loading data: use --device cpu or auto"),
    Case("train --device gpu without a GPU", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                               "--device", "gpu"],
         "asks for a CUDA GPU", "gpu means cuda; refused as above"),
    Case("train --device tpu", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root), "--device", "tpu"],
         "unknown device 'tpu'", "lists auto, cpu and cuda"),
    Case("train --optimizer adam", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                     "--optimizer", "adam"],
         "optimizer: Input should be 'adamw' or 'sgd'", "names the option and its values"),
    Case("train --balance with an unknown class", lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root),
                                                                    "--balance", "angry=1"],
         "'angry', not an emotion", "lists the emotions"),
    Case("train --balance anger=1 (one class left)",
         lambda ws, tmp: ["train", str(tmp / "run"), "-w", str(ws.root), "--balance", "anger=1", "--model", "tiny"],
         "a classifier needs at least 2 classes", "says how to keep two classes"),
    Case("train into a file", lambda ws, tmp: ["train", str(a_file(tmp)), "-w", str(ws.root)],
         "is a file", "asks for a folder"),
    Case("audit --noise-model forest", lambda ws, tmp: ["audit", "-w", str(ws.root), "--noise-model", "forest"],
         "noise_model: Input should be 'auto', 'hog-mlp' or 'hog-logreg'", "names the option and its values"),
    Case("audit --folds 1", lambda ws, tmp: ["audit", "-w", str(ws.root), "--folds", "1"],
         "folds: Input should be greater than or equal to 2", "names the option and its bound"),
    Case("audit --estimator without =", lambda ws, tmp: ["audit", "-w", str(ws.root), "--estimator", "gender"],
         "expected COLUMN=VALUE (e.g. gender=model.onnx", "shows the expected form"),
    Case("audit --demographics missing.csv",
         lambda ws, tmp: ["audit", "-w", str(ws.root), "--demographics", str(tmp / "missing.csv")],
         "demographics sidecar", "refuses before auditing"),
    Case("export --folds 8:1", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(ws.root), "--folds", "8:1"],
         "split.folds", "names the option"),
    Case("export --balance anger=x", lambda ws, tmp: ["export", str(tmp / "out"), "-w", str(ws.root),
                                                       "--balance", "anger=x"],
         "'anger=x' is not label=number", "shows the expected form"),
    Case("ingest hub garbage.parquet", lambda ws, tmp: ["ingest", "hub", str(garbage_parquet(tmp)),
                                                         "-w", str(tmp / "ws")],
         "cannot be read as parquet", "refuses; no workspace is left behind"),
    Case("run a recipe with a bad option", lambda ws, tmp: ["run", str(bad_recipe(tmp))],
         "step 1 (audit) of r.yaml: invalid audit: noise_model", "names the step and the option"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_user_errors_are_one_line_messages(case: Case, demo: Workspace, tmp_path: Path) -> None:
    if "without a GPU" in case.name and HAS_GPU:
        pytest.skip("this machine has a GPU")
    before = demo.manifest_path.read_bytes()
    result = runner.invoke(app, case.arguments(demo, tmp_path))
    assert result.exit_code == 2, result.output
    assert "error: " in result.output and case.message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "ws").exists()  # nothing created
    assert demo.manifest_path.read_bytes() == before


EXTRA_ROWS = [
    ("`ingest hub owner/name` offline, or with HF_HUB_OFFLINE=1", "2", "cannot reach the Hugging Face Hub / "
     "HF_HUB_OFFLINE is set", "fails at once (no 25 s of retries): needs network access or a local path"),
    ("read-only workspace", "0 / 2", "the workspace ... is read-only",
     "readers (export, shared lock) work; ingest and audit refuse"),
    ("image missing from the workspace", "0 / 2", "image(s) of the exported rows are missing",
     "audit counts it under `missing_image` only; export refuses"),
    ("a failed first ingest", "2", "(the source's error)", "removes the workspace folder it created"),
    ("any other exception (a bug)", "1", "internal error ... traceback in <log>",
     "one line; the traceback goes to a log file in the temp folder"),
]


def reliability_table() -> str:
    """The README's reliability table (markdown): one row per case above, then the cases that
    other tests here check."""
    rows = [(case.name, "2", case.message, case.does) for case in CASES] + EXTRA_ROWS
    lines = ["| case | exit | message (excerpt) | what fercurate does |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {case} | {code} | {message.replace('|', '/')} | {does} |"
                              for case, code, message, does in rows]) + "\n"


def test_reliability_table_has_a_row_per_case() -> None:
    assert len(reliability_table().splitlines()) == 2 + len(CASES) + len(EXTRA_ROWS)


def test_hub_name_fails_fast_offline(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fercurate_cli", "ingest", "hub", "owner/name", "-w",
                             str(tmp_path / "ws")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr and "local path" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "ws").exists()


def test_hub_name_unreachable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    result = runner.invoke(app, ["ingest", "hub", "owner/name", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "cannot reach the Hugging Face Hub" in result.output, result.output
    assert "needs network access" in result.output


def test_other_exceptions_are_internal_errors_with_a_log(demo: Workspace, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fercurate.audit.run

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(fercurate.audit.run, "audit_workspace", broken)
    result = runner.invoke(app, ["audit", "-w", str(demo.root)])
    assert result.exit_code == 1 and "internal error" in result.output and "KeyError: 'a bug'" in result.output
    assert "Traceback" not in result.output
    log = Path(result.output.rsplit("traceback in ", 1)[1].split()[0])
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
    log.unlink()


def test_error_lines_are_not_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 6) / "workspace"
    result = runner.invoke(app, ["audit", "-w", str(deep)])
    assert result.exit_code == 2
    assert f"there is no workspace at {deep}: run" in result.output.replace("\n", " ")
    assert f"there is no workspace at {deep}: run" in result.output  # one line, however long


def test_missing_image_is_counted_once_and_summary_is_json(demo: Workspace, tmp_path: Path) -> None:
    root = copy_of(demo, tmp_path)
    space = Workspace(root)
    lost = space.manifest()["filepath"][0].as_py()
    (root / lost).unlink()
    assert space.missing_images(space.manifest()["filepath"].to_pylist()) == [lost]
    result = runner.invoke(app, ["audit", "-w", str(root), "--no-label-noise", "--no-faces", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "audit" / "summary.json").read_text(), parse_constant=pytest.fail)
    quality = summary["quality"]
    assert quality["missing_image"] == 1 and quality["unreadable"] == 0
    assert quality["is_blank"] == quality["is_blurry"] == quality["too_dark"] == 0
    exported = runner.invoke(app, ["export", str(tmp_path / "out"), "-w", str(root)])
    assert exported.exit_code == 2 and "missing" in exported.output and "Traceback" not in exported.output


def test_summary_json_has_null_where_a_figure_is_nan() -> None:
    text = summary_json({"accuracy": float("nan"), "rates": [np.float32("nan"), np.float64(0.5)],
                         "where": Path("x"), "count": np.int64(3)})
    assert json.loads(text, parse_constant=pytest.fail) == {"accuracy": None, "rates": [None, 0.5], "where": "x",
                                                             "count": 3}


def test_train_balance_takes_what_export_takes(demo: Workspace, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path / "run"), "-w", str(demo.root), "--model", "tiny",
                                 "--epochs", "1", "--device", "cpu", "--balance", "anger=1,disgust=1",
                                 "--no-onnx", "--split-strategy", "grouped", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["class_names"] == ["anger", "disgust"]


@pytest.mark.parametrize(("text", "parsed"), [
    ("uniform", "uniform"), ("cap:10", "cap:10"), ("uniform:0", "uniform:0"),
    ("anger=1, disgust=2", {"anger": 1.0, "disgust": 2.0}), ({"fear": 1}, {"fear": 1.0}),
])
def test_balance_targets_parse_in_one_place(text: str | dict[str, float], parsed: object) -> None:
    assert parse_balance(text) == parsed


@pytest.mark.parametrize("text", ["even", "anger=nan", "anger=-1", "anger=0", "happy=1", "cap:x"])
def test_bad_balance_targets_are_option_errors(text: str) -> None:
    with pytest.raises(OptionError):
        parse_balance(text)


def test_devices_and_labels() -> None:
    assert [parse_device(name) for name in ("auto", "CPU", "gpu", "gpu:1", "cuda:0")] == [
        "auto", "cpu", "cuda", "cuda:1", "cuda:0"]
    with pytest.raises(OptionError):
        parse_device("cpu:1")
    assert BALANCE_LABELS == CANONICAL_LABELS


@pytest.fixture
def read_only_workspace(demo: Workspace) -> Iterator[Path]:
    """A copy of the demo workspace that the user ``nobody`` may read but not write (as root, a
    chmod alone would not stop writes); skipped where that user cannot be taken."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    base = Path(tempfile.mkdtemp(prefix="fercurate-read-only-"))
    try:
        shutil.copytree(demo.root, base / "ws")
        (base / "ws" / ".lock").unlink(missing_ok=True)
        for path in (base, *base.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield base / "ws"
    finally:
        shutil.rmtree(base)


def as_nobody(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                           *arguments], capture_output=True, text=True, timeout=120, cwd="/tmp")


def test_read_only_workspace_readers_work_and_writers_are_told(read_only_workspace: Path) -> None:
    reader = as_nobody("-c", "import sys; from fercurate.workspace import Workspace; space = Workspace(sys.argv[1])\n"
                             "with space.lock(shared=True): print(space.manifest().num_rows)", str(read_only_workspace))
    assert reader.returncode == 0 and reader.stdout.strip() == "56", reader.stderr
    writer = as_nobody("-m", "fercurate_cli", "audit", "-w", str(read_only_workspace))
    assert writer.returncode == 2 and "is read-only" in writer.stderr and "Traceback" not in writer.stderr
    out = Path(tempfile.mkdtemp(prefix="fercurate-export-"))
    out.chmod(0o777)
    try:  # export only reads the workspace: it works on a read-only one (it used to fail on .lock)
        export = as_nobody("-m", "fercurate_cli", "export", str(out / "x"), "-w", str(read_only_workspace),
                           "--format", "manifest,fer2013-csv", "--json")
        assert export.returncode == 0, export.stderr
        assert (out / "x" / "manifest.parquet").is_file()
    finally:
        shutil.rmtree(out)
