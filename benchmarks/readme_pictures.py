"""The README's pictures of the audit: the audit report and the FiftyOne App, as a person sees them.

Syncs an audited workspace into FiftyOne (what `fercurate review push` does), serves the App, and
renders with headless Chromium, through the same call the browser tests check the App with
(:func:`fercurate.audit.browser.render_page`):

- ``app-<tag>.png``: the App on the dataset (sidebar of synced fields, the grid of faces);
- ``app-likely-mislabelled-<tag>.png``: the saved view "likely mislabelled", worst label first;
- ``audit-report-<tag>.png``: the label-noise section of the audit's ``report.html``.

    python benchmarks/readme_pictures.py WS [--out docs/images] [--tag fer2013]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fercurate.audit.browser import render_page
from fercurate.audit.fiftyone_app import free_port, launch_app
from fercurate.audit.fiftyone_sync import sync_audit_to_fiftyone
from fercurate.workspace import Workspace

VIEW = "likely mislabelled"


def label_noise_page(report: Path, folder: Path) -> Path:
    """The report's head and its label-noise section as a page of its own (images still found beside
    the report), since a screenshot cannot scroll to a section reliably while images load."""
    text = report.read_text()
    head, _, section = text.partition('<h2 id="label-noise">')
    if not section:
        raise SystemExit(f"{report} has no label-noise section: audit with label noise on")
    page = folder / "label-noise.html"
    start = head[:head.index("<h1>")].replace("<title>", f'<base href="{report.parent.as_uri()}/"><title>')
    page.write_text(start + '<h2 id="label-noise">' + section)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--tag", default="fer2013")
    args = parser.parse_args()
    workspace = Workspace(args.workspace)
    report = (workspace.root / "audit" / "report.html").resolve()
    if not report.is_file():
        raise SystemExit(f"{report} is missing: run `fercurate audit -w {args.workspace}` first")
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    dataset = sync_audit_to_fiftyone(workspace)
    print(f"synced {len(dataset)} samples in {time.perf_counter() - started:.1f} s")
    handle = launch_app(dataset, address="127.0.0.1", port=free_port())
    try:
        with tempfile.TemporaryDirectory() as scratch:
            shots = [
                (handle.dataset_url, [dataset.name, "samples"], f"app-{args.tag}.png", (1400, 900)),
                (handle.view_url(VIEW), [VIEW, "samples"], f"app-likely-mislabelled-{args.tag}.png", (1400, 900)),
                (label_noise_page(report, Path(scratch)).as_uri(), ["Label noise", "majority disputes"],
                 f"audit-report-{args.tag}.png", (1100, 1400)),
            ]
            for url, expected, name, window in shots:
                text = render_page(url, expected, screenshot=args.out / name, window=window)
                missing = [item for item in expected if item not in text]
                print(f"{args.out / name}" + (f"  (page lacked {missing})" if missing else ""))
    finally:
        handle.session.close()


if __name__ == "__main__":
    main()
