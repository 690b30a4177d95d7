"""The one error type fercurate raises for its user, and the kinds a caller may want to tell apart.

Invariant: every error that bad input, a bad option or the state of the user's files can cause is a
:class:`FercurateError` whose text says what is wrong *and what to do*. The command line catches
this one type, in one place, prints it without a traceback and exits with status 2; any other
exception reaching the command line is a bug in fercurate and is reported as one.

This module imports nothing from fercurate, so every stage may raise these.
"""

from __future__ import annotations


class FercurateError(Exception):
    """Something the user can fix. ``fix`` (optional) is the advice, appended to the message."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}: {fix}")


class OptionError(FercurateError, ValueError):
    """An option has a value fercurate cannot use (checked where the option is defined)."""


class SourceError(FercurateError):
    """An input cannot be read at all (missing, empty, not in the expected layout)."""


class SchemaError(FercurateError, ValueError):
    """Rows break the unified schema; the message names the rule and the first offending id."""


class WorkspaceError(FercurateError):
    """The workspace is missing, not a folder, unreadable, read-only or damaged."""


class WorkspaceLocked(WorkspaceError):
    """Another process is writing to the workspace."""


class ExportError(FercurateError, ValueError):
    """The export cannot be made as asked."""


class RecipeError(FercurateError, ValueError):
    """A recipe file is malformed or names a step, key or value fercurate does not know."""


class TrainError(FercurateError, ValueError):
    """Training or benchmarking cannot run as asked (device, data, run folder)."""


class AuditError(FercurateError, ValueError):
    """The audit cannot run as asked (its inputs or options)."""


class FiftyOneError(FercurateError):
    """FiftyOne's database or App cannot serve the workspace (not installed, cannot start, port taken)."""
