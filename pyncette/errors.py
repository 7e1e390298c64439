"""Exceptions raised by pyncette."""

from __future__ import annotations


class PyncetteException(Exception):
    """Base class of every exception pyncette raises on purpose."""


class LeaseLostException(PyncetteException):
    """The lease on a task was lost: another instance claimed it, or the task was removed."""

    def __init__(self, task: object = None, message: str | None = None) -> None:
        self.task = task
        name = getattr(task, "name", None)
        super().__init__(message or f"Lease lost on task {name!r}")


class TaskLockedException(PyncetteException):
    """The task instance is executing right now; pass ``force=True`` to overwrite it anyway."""

    def __init__(self, task: object = None, message: str | None = None) -> None:
        self.task = task
        name = getattr(task, "name", None)
        super().__init__(message or f"Task {name!r} is locked by a running execution")


class BackendUnavailableError(PyncetteException):
    """The storage backend could not be reached or failed; the operation may be retried."""
