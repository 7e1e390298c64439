"""Public data types: execution options, the task context and task state."""

from __future__ import annotations

import datetime
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NewType, Protocol, TypeVar

from pyncette.outcome import RunRecord, RunStatus

if TYPE_CHECKING:
    from pyncette.context import PyncetteContext
    from pyncette.task import Task

Lease = NewType("Lease", str)
"""Opaque token naming one claim of a task; commits and heartbeats must present it."""

ContinuationToken = NewType("ContinuationToken", str)
"""Opaque token for fetching the next page of :meth:`PyncetteContext.list_tasks`."""

T = TypeVar("T")
Decorator = Callable[[T], T]
"""A decorator that returns what it is given (``Decorator[FixtureFunc]``, say)."""


class ExecutionMode(enum.Enum):
    """Delivery guarantee of a task."""

    AT_LEAST_ONCE = 0
    """Locked while it runs; a crashed run is retried once the lease expires (the default)."""
    AT_MOST_ONCE = 1
    """The next run is committed before this one starts; a crashed run is never retried."""


MAX_RETRY_ATTEMPTS = 100
"""The most attempts a :class:`Retry` may allow (the first run included)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Retries of a failed at-least-once run (the ``retry=`` task option).

    The run is attempted up to ``attempts`` times in all, by the instance that claimed
    it, which keeps the lease meanwhile: after attempt *n* fails it waits
    ``min(backoff * factor ** (n - 1), max_backoff)`` and runs again, with
    ``context.attempt == n + 1``. When the last attempt fails, the task's
    ``failure_mode`` applies as without retries.
    """

    attempts: int = 3
    backoff: datetime.timedelta = datetime.timedelta(seconds=1)
    max_backoff: datetime.timedelta = datetime.timedelta(minutes=1)
    factor: float = 2.0

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValueError(f"Retry attempts must be an integer, got {attempts!r}")
        if not 1 <= attempts <= MAX_RETRY_ATTEMPTS:
            raise ValueError(
                f"Retry attempts must be between 1 and {MAX_RETRY_ATTEMPTS}, got {attempts}"
            )
        for option in ("backoff", "max_backoff"):
            value = getattr(self, option)
            if not isinstance(value, datetime.timedelta) or value < datetime.timedelta(0):
                raise ValueError(f"Retry {option} must be a timedelta >= 0, got {value!r}")
        if self.max_backoff < self.backoff:
            raise ValueError(
                f"Retry max_backoff ({self.max_backoff}) is shorter than backoff ({self.backoff})"
            )
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"Retry factor must be a number >= 1, got {factor!r}")
        if factor == float("inf"):
            raise ValueError("Retry factor must be finite")

    def delay(self, failed_attempt: int) -> datetime.timedelta:
        """The pause after attempt ``failed_attempt`` (1 for the first run) failed."""
        try:
            step = self.backoff * self.factor ** (failed_attempt - 1)
        except OverflowError:
            return self.max_backoff
        return min(step, self.max_backoff)

    def to_json(self) -> dict[str, Any]:
        """The form stored in a dynamic instance's spec."""
        return {
            "attempts": self.attempts,
            "backoff": self.backoff.total_seconds(),
            "max_backoff": self.max_backoff.total_seconds(),
            "factor": self.factor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Retry:
        """What :meth:`to_json` wrote (a ``ValueError`` for anything else)."""
        unknown = set(data) - {"attempts", "backoff", "max_backoff", "factor"}
        if unknown:
            raise ValueError(f"Unknown Retry field(s) {', '.join(sorted(unknown))}")
        try:
            return cls(
                attempts=data.get("attempts", 3),
                backoff=datetime.timedelta(seconds=data.get("backoff", 1.0)),
                max_backoff=datetime.timedelta(seconds=data.get("max_backoff", 60.0)),
                factor=data.get("factor", 2.0),
            )
        except (TypeError, OverflowError) as error:
            raise ValueError(f"Invalid Retry {dict(data)!r}: {error}") from None


class FailureMode(enum.Enum):
    """What happens when an at-least-once execution raises."""

    NONE = 0
    """Stay locked until the lease expires, then retry (the default)."""
    UNLOCK = 1
    """Unlock at once, so the run is retried on the next tick."""
    COMMIT = 2
    """Treat the failure as success and schedule the next run."""


class ResultType(enum.Enum):
    """Outcome of polling one task, as Pyncette 1.x's repositories reported it."""

    MISSING = 0
    """No such task is stored."""
    PENDING = 1
    """Not due yet."""
    READY = 2
    """Due, and now leased to the caller."""
    LOCKED = 3
    """Due, but another execution holds the lease."""
    LEASE_MISMATCH = 4
    """The lease presented is not the current one."""


class Heartbeater(Protocol):
    """Extends the lease of one execution (what :meth:`Context.heartbeat` calls)."""

    def __call__(self) -> Awaitable[None]: ...


class TaskFunc(Protocol):
    def __call__(self, context: Context) -> Awaitable[None]: ...


class SyncTaskFunc(Protocol):
    """A plain ``def`` task: it runs in a worker thread."""

    def __call__(self, context: Context) -> None: ...


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
    """When this run was due, in the task's timezone (UTC when it has none)."""
    args: dict[str, Any]
    attempt: int = 1
    """Which attempt of this run this is: 1, or more when the task's ``retry`` runs it
    again after a failure."""
    _lease: Lease | None = None
    _heartbeater: Callable[[Context], Awaitable[None]] | None = None
    _held: Any = None
    """What the heartbeater keeps of the lease between beats (the scheduler's claimed
    row): one attribute, so that starting an execution builds nothing for it."""
    _items: Mapping[str, Any] = MappingProxyType({})

    @classmethod
    def for_execution(
        cls,
        app_context: PyncetteContext,
        task: Task,
        scheduled_at: datetime.datetime,
        lease: Lease | None,
        heartbeat: Callable[[Context], Awaitable[None]],
        items: Mapping[str, Any],
        held: Any = None,
    ) -> Context:
        """The context of one execution (built by the scheduler); ``heartbeat(context)``
        is what :meth:`heartbeat` calls, and ``held`` what it finds in ``context._held``."""
        context = cls()
        context.app_context = app_context
        context.task = task
        context.scheduled_at = scheduled_at
        context.args = dict(task.extra_args)
        context._lease = lease
        context._heartbeater = heartbeat
        context._held = held
        context._items = items
        return context

    @property
    def lease(self) -> Lease | None:
        """The lease this execution holds: ``None`` for at-most-once executions and once
        the lease is known to be lost. Commits, unlocks and heartbeats present it."""
        return self._lease

    @lease.setter
    def lease(self, value: Lease | None) -> None:
        self._lease = value

    async def heartbeat(self) -> None:
        """Extend this execution's lease by the task's lease duration.

        Raises :class:`~pyncette.errors.LeaseLostException` if another instance took
        the lease or the task was removed. A no-op for at-most-once executions.
        """
        if self._heartbeater is None:
            raise RuntimeError("heartbeat() is only available while the task is executing")
        await self._heartbeater(self)

    if TYPE_CHECKING:  # middlewares may set attributes of their own; this lets them type-check

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: fall back to fixtures and context items.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"Context has no attribute {name!r}") from None


PAUSED_AT = datetime.datetime(2200, 1, 1, tzinfo=datetime.UTC)
"""The ``scheduled_at`` of a paused task's row: later than any run a task can have (an
``execute_at`` must be before 2200), so no claim reaches it."""


@dataclass(frozen=True)
class TaskState:
    """Stored state of a task (or dynamic task instance)."""

    task: Task
    scheduled_at: datetime.datetime
    """When the next (or the currently running) execution is due; :data:`PAUSED_AT`
    while the task is paused."""
    locked_until: datetime.datetime | None
    """When the current lease expires; ``None`` when nobody holds a lease."""
    locked_by: str | None
    """The lease token of the current holder; ``None`` when unlocked."""
    last_run: RunRecord | None = None
    """The last run whose end was stored (with the commit or unlock that ended it);
    ``None`` before the first. The ``last_*`` properties read it."""

    @property
    def paused(self) -> bool:
        """Whether :meth:`PyncetteContext.pause_task` paused it (and nothing resumed it)."""
        return self.scheduled_at >= PAUSED_AT

    @property
    def last_run_at(self) -> datetime.datetime | None:
        """When the last stored run started."""
        return None if self.last_run is None else self.last_run.started_at

    @property
    def last_status(self) -> RunStatus | None:
        """How the last stored run ended."""
        return None if self.last_run is None else self.last_run.status

    @property
    def last_error(self) -> str | None:
        """The error of the last stored run, if it failed (or why it was skipped)."""
        return None if self.last_run is None else self.last_run.error

    @property
    def last_duration(self) -> datetime.timedelta | None:
        """How long the last stored run took."""
        return None if self.last_run is None else self.last_run.duration

    @property
    def attempt(self) -> int | None:
        """The attempt that ended the last stored run (more than 1 after retries)."""
        return None if self.last_run is None else self.last_run.attempt


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


ListTasksResponse = TaskPage
"""Pyncette 1.x's name for :class:`TaskPage` (the same class)."""


@dataclass
class PollResponse:
    """Pyncette 1.x's result of polling one task: the outcome, when the task is (or
    was) due, and the lease when the poll claimed it."""

    result: ResultType
    scheduled_at: datetime.datetime
    lease: Lease | None


@dataclass
class QueryResponse:
    """Pyncette 1.x's page of due instances of a dynamic task, each with its lease."""

    tasks: list[tuple[Task, Lease]]
    continuation_token: ContinuationToken | None
