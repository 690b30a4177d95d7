"""Pages as a person sees them: headless Chromium renders a URL (the FiftyOne App, an audit report)
to its visible text and, optionally, a screenshot.

The browser tests check what the App shows with :func:`render_page`, and
``benchmarks/readme_pictures.py`` makes the README's pictures with the same call, so a picture is
what the tests saw. Chromium is the system's (Debian's ``chromium``; ``tests/ci_install_browser.sh``
installs it); nothing is downloaded.

Without a virtual-time budget Chromium captures the page before the App has drawn anything; a page
that does not show every expected string within the first budget is loaded again with the next.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from fercurate.errors import FiftyOneError

#: Flags that make headless Chromium work in a container, offline (see STACK.md).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
#: Virtual-time budgets (ms) to try in turn, each in a fresh Chromium.
BUDGETS_MS = (10_000, 30_000, 30_000)
#: Seconds one try may take. Headless Chromium sometimes never returns (once in a CI run on this
#: project's machine; a render normally takes seconds), so a hung try is killed and the next starts.
TRY_TIMEOUT_S = 90
WINDOW = (1400, 900)


def chromium_binary() -> str | None:
    """The system's Chromium (or Chrome), or None."""
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def visible_text(dom: str) -> str:
    """The text a reader sees in a dumped DOM, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def render_page(url: str, expected: list[str], *, screenshot: Path | None = None,
                window: tuple[int, int] = WINDOW, chromium: str | None = None) -> str:
    """Load ``url`` in headless Chromium and return its visible text once every ``expected`` string
    is in it (or the last try's text); with ``screenshot``, the page is also saved there as PNG."""
    chromium = chromium or chromium_binary()
    if chromium is None:
        raise FiftyOneError("no Chromium found to render the page",
                            "install it (apt-get install chromium, or run tests/ci_install_browser.sh)")
    text, hung = "", 0
    for budget in BUDGETS_MS:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            extra = [f"--screenshot={screenshot}"] if screenshot else []
            try:
                result = subprocess.run(
                    [chromium, *CHROMIUM_FLAGS, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}",
                     f"--virtual-time-budget={budget}", "--dump-dom", *extra, url],
                    capture_output=True, text=True, timeout=TRY_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # headless Chromium now and then never returns: try afresh
                hung += 1
                continue
        if result.returncode != 0:
            raise FiftyOneError(f"Chromium could not render {url}: {result.stderr[-500:]}")
        text = visible_text(result.stdout)
        if all(item in text for item in expected):
            break
    if hung == len(BUDGETS_MS):
        raise FiftyOneError(f"Chromium hung on every try to render {url} ({TRY_TIMEOUT_S} s each)",
                            "check that the App answers at that address, then run again")
    return text
