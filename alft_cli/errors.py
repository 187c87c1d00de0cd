"""User-facing errors.

Every error a user can cause (bad input, bad options, a busy project) is an ``AlftError``;
the CLI prints its message on one line and exits with ``exit_code``. Anything else is a bug.
"""

from __future__ import annotations


class AlftError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Further lines (e.g. every bad row of a label file) shown under the one-line message.
        self.details = details or []


class ProjectError(AlftError):
    """The project directory is missing, malformed, or from a newer alft."""


class ProjectBusyError(AlftError):
    """Another alft command holds the project's write lock."""

    exit_code = 3


class LabelFileError(AlftError):
    """A label file was refused; nothing was imported."""


class ArchiveError(AlftError):
    """The archive (folder or manifest) cannot be indexed."""


class OptionError(AlftError):
    """An option value is impossible (unknown name, bad budget, ...)."""


class CheckpointError(AlftError):
    """A checkpoint or weights file is missing, unsafe, or does not fit the model."""


class LabelStudioError(AlftError):
    """A Label Studio server refused, failed or could not be reached; nothing was changed."""
