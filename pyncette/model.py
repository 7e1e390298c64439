"""Public data types: execution options, the task context and task state."""

from __future__ import annotations

import datetime
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NewType, Protocol

if TYPE_CHECKING:
    from pyncette.pyncette import PyncetteContext
    from pyncette.task import Task

Lease = NewType("Lease", str)
"""Opaque token naming one claim of a task; commits and heartbeats must present it."""

ContinuationToken = NewType("ContinuationToken", str)
"""Opaque token for fetching the next page of :meth:`PyncetteContext.list_tasks`."""


class ExecutionMode(enum.Enum):
    """Delivery guarantee of a task."""

    AT_LEAST_ONCE = 0
    """Locked while it runs; a crashed run is retried once the lease expires (the default)."""
    AT_MOST_ONCE = 1
    """The next run is committed before this one starts; a crashed run is never retried."""


class FailureMode(enum.Enum):
    """What happens when an at-least-once execution raises."""

    NONE = 0
    """Stay locked until the lease expires, then retry (the default)."""
    UNLOCK = 1
    """Unlock at once, so the run is retried on the next tick."""
    COMMIT = 2
    """Treat the failure as success and schedule the next run."""


class Heartbeater(Protocol):
    def __call__(self) -> Awaitable[None]: ...


class TaskFunc(Protocol):
    def __call__(self, context: Context) -> Awaitable[None]: ...


class PartitionSelector(Protocol):
    def __call__(self, partition_count: int, task_id: str) -> int: ...


NextFunc = Callable[[], Awaitable[None]]


class MiddlewareFunc(Protocol):
    def __call__(self, context: Context, next: NextFunc) -> Awaitable[None]: ...


class FixtureFunc(Protocol):
    def __call__(self, app_context: PyncetteContext) -> AsyncIterator[Any]: ...


class Context:
    """What a task (and each middleware) receives for one execution.

    Besides the attributes below, every fixture and every value given to
    :meth:`PyncetteContext.add_to_context` is readable as an attribute, and a
    middleware may set attributes of its own.
    """

    app_context: PyncetteContext
    task: Task
    scheduled_at: datetime.datetime
    args: dict[str, Any]
    _group: str
    _lease: Lease | None

    async def heartbeat(self) -> None:
        """Extend this execution's lease by the task's lease duration.

        Raises :class:`~pyncette.errors.LeaseLostException` if another instance took
        the lease or the task was removed. A no-op for at-most-once executions.
        """
        await self.app_context._heartbeat(self)

    if TYPE_CHECKING:  # middlewares may set attributes of their own; this lets them type-check

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: fall back to fixtures and context items.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.app_context._items[name]
        except KeyError:
            raise AttributeError(f"Context has no attribute {name!r}") from None


@dataclass(frozen=True)
class TaskState:
    """Stored state of a task (or dynamic task instance)."""

    task: Task
    scheduled_at: datetime.datetime
    """When the next (or the currently running) execution is due."""
    locked_until: datetime.datetime | None
    """When the current lease expires; ``None`` when nobody holds a lease."""
    locked_by: str | None
    """The lease token of the current holder; ``None`` when unlocked."""


@dataclass(frozen=True)
class TaskPage:
    """One page of :meth:`PyncetteContext.list_tasks`; iterate it for the task states."""

    tasks: list[TaskState]
    continuation_token: ContinuationToken | None
    """Pass back to get the next page; ``None`` on the last page."""

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)
