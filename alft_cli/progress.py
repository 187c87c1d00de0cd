"""The one channel through which the core reports to the user.

Core modules never print; they call :func:`reporter` and use ``info``/``warn``/``task``.
The CLI installs a rich console reporter; library users and tests get a silent one unless
they install their own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class Task:
    """A running progress task; ``advance`` moves it and updates live fields (loss, img/s)."""

    def __init__(self, total: int | None, description: str) -> None:
        self.total = total
        self.description = description
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self.started = time.perf_counter()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.completed += n
        self.fields.update(fields)

    def update(self, *, description: str | None = None, total: int | None = None,
               completed: int | None = None, **fields: Any) -> None:
        if description is not None:
            self.description = description
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = completed
        self.fields.update(fields)


class Reporter:
    """Silent reporter: collects messages (tests read them), shows nothing."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        yield Task(total, description)


class RichReporter(Reporter):
    """Reporter for terminals: messages and progress bars on stderr via rich."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet

    def info(self, message: str) -> None:
        super().info(message)
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        super().warn(message)
        self.console.print(f"warning: {message}", style="yellow", markup=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        if self.quiet:
            yield Task(total, description)
            return
        if not self.console.is_terminal:
            # Logs of batch jobs: a plain line every LOG_EVERY seconds instead of a live bar.
            task = _LogTask(self, total, description)
            yield task
            task.emit(final=True)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=self.console, transient=False,
        )
        handle = _RichTask(progress, total, description)
        with progress:
            yield handle


class _RichTask(Task):
    def __init__(self, progress: Any, total: int | None, description: str) -> None:
        super().__init__(total, description)
        self._progress = progress
        self._id = progress.add_task(description, total=total, status="")

    def _refresh(self) -> None:
        status = "  ".join(_format_field(k, v) for k, v in self.fields.items())
        self._progress.update(self._id, completed=self.completed, total=self.total,
                              description=self.description, status=status)

    def advance(self, n: int = 1, **fields: Any) -> None:
        super().advance(n, **fields)
        self._refresh()

    def update(self, **kwargs: Any) -> None:
        super().update(**kwargs)
        self._refresh()


LOG_EVERY = 30.0


class _LogTask(Task):
    def __init__(self, owner: RichReporter, total: int | None, description: str) -> None:
        super().__init__(total, description)
        self._owner = owner
        self._last = time.perf_counter()

    def advance(self, n: int = 1, **fields: Any) -> None:
        super().advance(n, **fields)
        if time.perf_counter() - self._last >= LOG_EVERY:
            self.emit()

    def emit(self, final: bool = False) -> None:
        self._last = time.perf_counter()
        if final and self.completed == 0:
            return
        total = f"/{self.total}" if self.total else ""
        status = "  ".join(_format_field(k, v) for k, v in self.fields.items())
        elapsed = time.perf_counter() - self.started
        self._owner.console.print(f"{self.description}: {self.completed}{total} "
                                  f"({elapsed:.0f} s) {status}".rstrip(), markup=False)


def _format_field(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


_current: Reporter = Reporter()


def reporter() -> Reporter:
    """The reporter in use."""
    return _current


def set_reporter(new: Reporter) -> Reporter:
    """Install ``new`` as the reporter; returns the previous one."""
    global _current
    previous, _current = _current, new
    return previous
