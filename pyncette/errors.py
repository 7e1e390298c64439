"""Exceptions raised by pyncette."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datetime

    from pyncette.task import Task


def _task_name(task: object) -> str:
    return str(getattr(task, "canonical_name", None) or getattr(task, "name", None) or task)


class PyncetteException(Exception):
    """Base class of every exception pyncette raises on purpose."""


class LeaseLostException(PyncetteException):
    """The lease on a task was lost: another instance claimed it, or the task was removed.

    ``message`` replaces the default text, which names the task.
    """

    def __init__(self, task: Task, *, message: str | None = None) -> None:
        self.task = task
        super().__init__(message or f"Lease on the task {_task_name(task)} was lost.")


class TaskLockedException(PyncetteException):
    """The task instance is executing right now; pass ``force=True`` to overwrite it anyway.

    ``locked_until`` is when the running execution's lease expires, if known;
    ``message`` replaces the default text, which names the task.
    """

    def __init__(
        self,
        task: Task,
        locked_until: datetime.datetime | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.task = task
        self.locked_until = locked_until
        if message is None:
            until = f" Task is locked until {locked_until}." if locked_until else ""
            message = (
                f"Cannot update task {_task_name(task)} while it is locked.{until} "
                "Use force=True to override."
            )
        super().__init__(message)


class BackendUnavailableError(PyncetteException):
    """The storage backend could not be reached or failed; the operation may be retried."""
