"""The command line's progress bars. In a terminal they are rich's live bars. Where stderr is a
file or a pipe (a ``nohup`` run, a CI log, ``2> log``) rich draws nothing at all, so a long
training or fill would leave an empty log for an hour; there the same bar writes a plain line per
task every ``LOG_EVERY_S`` seconds and once where it ends (its total reached, or the bar closed)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID
from rich.text import Text

LOG_EVERY_S = 30.0


class LoggedProgress(Progress):
    """A transient rich ``Progress`` that also logs its tasks as lines when its console is not a
    terminal: its columns, all but the bar itself, joined by spaces."""

    def __init__(self, *columns: ProgressColumn, console: Console, log_every_s: float = LOG_EVERY_S) -> None:
        super().__init__(*columns, console=console, transient=True)
        self.log_every_s = log_every_s
        self._last_logged: dict[TaskID, float] = {}
        self._done: set[TaskID] = set()

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def stop(self) -> None:
        """Log where each task ended (a total may be unknown or an estimate), then stop."""
        for task_id in list(self._tasks):
            self._log(task_id, final=True)
        super().stop()

    def _log(self, task_id: TaskID, *, final: bool = False) -> None:
        if self.console.is_terminal or task_id in self._done:
            return
        with self._lock:
            task = self._tasks[task_id]
        now = time.monotonic()
        if task.finished or final:
            self._done.add(task_id)
        elif now - self._last_logged.setdefault(task_id, now) < self.log_every_s:
            return
        self._last_logged[task_id] = now
        cells = [column(task) for column in self.columns if not isinstance(column, (BarColumn, str))]
        self.console.print(Text(" ").join(cell for cell in cells if isinstance(cell, Text)),
                           soft_wrap=True, highlight=False)
