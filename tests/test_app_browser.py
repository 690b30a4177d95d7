"""The FiftyOne App really shows a synced dataset: served in remote mode and rendered by a headless
Chromium, the page names the dataset, counts its samples, draws their faces, and each saved view
opens by its URL with exactly its planted samples.

Chromium is Debian's (``tests/ci_install_browser.sh`` installs it); without one these tests skip.
Pages are rendered by :func:`fercurate.audit.browser.render_page`, the call that makes the README's
pictures. They are loaded one after another, never at once: every tab of one App session shares its
state, so a tab that opens a saved view switches the others to it too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from conftest import fiftyone_database_dir
from test_fiftyone import Planted, planted_workspace

from fercurate.audit.browser import chromium_binary, render_page
from fercurate.audit.fiftyone_app import AppHandle, free_port, launch_app
from fercurate.audit.fiftyone_sync import SAVED_VIEWS, sync_to_fiftyone
from fercurate.errors import FiftyOneError


@dataclass
class Served:
    handle: AppHandle
    planted: Planted
    chromium: str

    def render(self, url: str, expected: list[str], screenshot: Path | None = None) -> str:
        """Load ``url`` in headless Chromium; return the page's visible text once every
        ``expected`` string is in it (trying the longer budget if needed)."""
        return render_page(url, expected, screenshot=screenshot, chromium=self.chromium)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The planted demo workspace, synced and served by the App on a free port."""
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium, or run tests/ci_install_browser.sh)")
    fiftyone_database_dir(tmp_path_factory)
    import fiftyone as fo

    planted = planted_workspace(tmp_path_factory.mktemp("app"))
    name = f"fercurate-test-{uuid.uuid4().hex[:12]}"
    dataset = sync_to_fiftyone(planted.workspace, planted.audit, name=name)
    handle = launch_app(dataset, address="127.0.0.1", port=free_port())
    try:
        yield Served(handle, planted, chromium)
    finally:
        handle.session.close()
        fo.delete_dataset(name)


def count_of(text: str) -> list[int]:
    """Every "N sample(s)" count the page shows."""
    return [int(number.replace(",", "")) for number in re.findall(r"(\d[\d,]*) samples?\b", text)]


def test_app_shows_the_dataset_its_count_and_its_faces(served: Served, tmp_path: Path) -> None:
    dataset = served.handle.session.dataset
    rows = len(served.planted.ids)
    shot = tmp_path / "app.png"
    text = served.render(served.handle.dataset_url, [dataset.name, f"{rows} samples"], screenshot=shot)

    assert dataset.name in text
    assert rows in count_of(text), text[:2000]
    for field in ("ground_truth", "prediction", "fercurate_id", "label_quality", "near_group"):
        assert field in text  # the sidebar lists the synced fields
    labels = set(served.planted.workspace.manifest()["label"].to_pylist())
    drawn = {label for label in labels if re.search(rf"\b{label}\b", text)}
    assert drawn == labels  # every sample tile carries its label

    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (900, 1400)
    grid = image[150:850, 320:1380]  # right of the sidebar, below the toolbar
    assert grid.std() > 20, "the sample grid is blank: the App drew no faces"


@pytest.mark.parametrize("view", [view.name for view in SAVED_VIEWS])
def test_each_saved_view_opens_by_url_with_its_samples(served: Served, view: str) -> None:
    expected = served.planted.views[view]
    saved = served.handle.session.dataset.load_saved_view(view)
    if saved._is_dynamic_groups:  # the App counts groups: here one family, a parent and its child
        groups = len({served.planted.workspace.manifest().to_pandas().set_index("id").loc[expected[-1], "parent_id"]})
        text = served.render(served.handle.view_url(view), [view, f"{groups} group"])
        assert view in text and re.findall(r"(\d+) groups?\b", text) == [str(groups)], text[:2000]
        return
    noun = "sample" if len(expected) == 1 else "samples"
    text = served.render(served.handle.view_url(view), [view, f"{len(expected)} {noun}"])

    assert view in text  # the saved-view selector names it
    assert count_of(text) == [len(expected)], text[:2000]


def test_launch_refuses_a_port_in_use(served: Served) -> None:
    with pytest.raises(FiftyOneError, match="already in use"):
        launch_app(served.handle.session.dataset, port=served.handle.session.server_port)
