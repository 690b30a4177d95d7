"""The FiftyOne App for a synced workspace, served in remote mode (a URL to open in any browser,
also over an SSH tunnel). The dataset it shows comes from :mod:`fercurate.audit.fiftyone_sync`.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fercurate.audit.fiftyone_sync import quiet_fiftyone
from fercurate.errors import FiftyOneError

if TYPE_CHECKING:
    import fiftyone as fo


@dataclass(frozen=True)
class AppHandle:
    """A running FiftyOne App: its session (keep it alive; ``session.wait()`` blocks) and URL."""

    session: fo.Session
    url: str

    def view_url(self, view_name: str) -> str:
        """The URL that opens one of the dataset's saved views."""
        import fiftyone.core.utils as fou

        dataset = self.session.dataset
        if not dataset.has_saved_view(view_name):
            raise KeyError(f"dataset {dataset.name!r} has no saved view {view_name!r}")
        return f"{self.dataset_url}?view={fou.to_slug(view_name)}"

    @property
    def dataset_url(self) -> str:
        """The URL that opens the dataset itself."""
        return f"{self.url}datasets/{self.session.dataset.slug}"


def free_port(address: str = "127.0.0.1") -> int:
    """A port on ``address`` that nothing listens on now, for an App nobody has to type the port of."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def launch_app(
    dataset: fo.Dataset,
    address: str = "127.0.0.1",
    port: int = 5151,
    wait: bool = True,
    timeout: float = 60.0,
) -> AppHandle:
    """Serve the FiftyOne App for ``dataset`` in remote mode (no browser is opened here).

    Open the returned URL in a browser on this machine, or forward the port (``ssh -N -L
    5151:127.0.0.1:5151 host``) from another. With ``wait``, returns only once the App answers
    HTTP (up to ``timeout`` seconds). Prints nothing: FiftyOne's own instructions are silenced
    so the caller decides what to show. Raises OSError when the port is taken (FiftyOne would
    otherwise join whatever App server already listens there, perhaps on another database).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex((address, port)) == 0:
            raise FiftyOneError(f"port {port} on {address} is already in use", "pass another port with --port")
    import fiftyone as fo

    with quiet_fiftyone():
        session = fo.launch_app(dataset, remote=True, address=address, port=port)
    url = f"http://{address}:{port}/"
    if wait:
        _wait_for_http(f"{url}fiftyone", timeout)
    return AppHandle(session=session, url=url)


def _wait_for_http(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers, so a returned App URL works at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            if time.monotonic() >= deadline:
                raise FiftyOneError(
                    f"the FiftyOne App did not answer at {url} within {timeout:.0f} s: {error}") from None
            time.sleep(0.2)
