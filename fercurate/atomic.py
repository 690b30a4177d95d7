"""Atomic file writes: a reader (or a process killed mid-write) sees the old file or the complete
new one, never half of one.

Every file fercurate replaces (manifests, skips, audit results, checkpoints, ONNX models, CSVs)
is written through :func:`atomic_path`: to a temporary name beside the target, then renamed onto
it in one step, with the permissions the user's umask gives (temporary-file functions create
owner-only files). Content-addressed images use their own create-if-absent variant in
:mod:`fercurate.workspace`, which must also tell which concurrent writer created the file.

This module imports nothing from fercurate, so every stage may use it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """This process's umask, read from /proc where it can be (setting the umask to read it races
    with other threads)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def temporary_name(target: str | Path) -> Path:
    """A name beside ``target`` that no other process or thread writing it uses. It keeps the
    target's suffix, since some writers (``np.save``) append theirs to a path without it."""
    target = Path(target)
    return target.with_name(f".{target.stem}.{os.getpid()}.{threading.get_ident()}.tmp{target.suffix}")


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s new content to; when the block ends without
    an error, the file is given the umask's permissions and renamed onto ``target``; otherwise it
    is removed and ``target`` is left as it was. Missing parent folders are created."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
