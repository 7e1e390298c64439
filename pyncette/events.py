"""What the scheduler reports as it runs, for metrics, logs and tests.

Subscribe with :meth:`pyncette.Pyncette.subscribe`::

    def on_failure(event: ExecutionFailed) -> None:
        alert(event.task.name, event.error)

    app.subscribe(on_failure, ExecutionFailed)

Callbacks are plain functions called synchronously on the event loop, in subscription
order; they must not block. An exception in a callback is logged and does not affect
the scheduler or the other callbacks.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyncette.task import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True, slots=True)
class TickStarted(Event):
    """The poll loop starts claiming due work."""

    at: datetime.datetime


@dataclass(frozen=True, slots=True)
class TickFinished(Event):
    """One pass of the poll loop over every polled group ended."""

    at: datetime.datetime
    duration: float
    """Seconds the tick took (``time.perf_counter``)."""
    claimed: int
    """Executions claimed in this tick."""
    error: BaseException | None = None
    """Why the tick failed (the loop backs off and tries again); ``None`` if it did not."""


@dataclass(frozen=True, slots=True)
class ExecutionStarted(Event):
    """An execution of ``task`` (a static task or a dynamic instance) begins."""

    task: Task
    scheduled_at: datetime.datetime
    started_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class ExecutionFinished(Event):
    """An execution returned normally."""

    task: Task
    scheduled_at: datetime.datetime
    started_at: datetime.datetime
    duration: float


@dataclass(frozen=True, slots=True)
class ExecutionFailed(Event):
    """An execution raised ``error``; what happens next is the task's ``failure_mode``."""

    task: Task
    scheduled_at: datetime.datetime
    started_at: datetime.datetime
    duration: float
    error: BaseException


@dataclass(frozen=True, slots=True)
class ExecutionRetried(Event):
    """Attempt ``attempt`` of a run failed (reported by :class:`ExecutionFailed` too) and
    the task's ``retry`` runs it again after ``delay``, holding the lease meanwhile."""

    task: Task
    scheduled_at: datetime.datetime
    attempt: int
    delay: datetime.timedelta
    error: BaseException


@dataclass(frozen=True, slots=True)
class ExecutionSkipped(Event):
    """A claimed run was not executed (its row moved on to the next run, or was removed
    for a one-off task); ``reason`` says why, e.g. that it was found later than the
    task's ``misfire_grace_time``."""

    task: Task
    scheduled_at: datetime.datetime
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseLost(Event):
    """An execution's lease was found taken by another instance (or its row removed),
    or ran out before the execution could start: the execution is not committed (not
    started, in the second case)."""

    task: Task
    scheduled_at: datetime.datetime


E = TypeVar("E", bound=Event)
Callback = Callable[[E], None]


class EventBus:
    """Subscriptions of one app."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[tuple[type[Event], ...], Callable[[Event], None]]] = []
        self.active = False
        """Whether anybody listens (so callers can skip building events)."""

    def subscribe(
        self,
        callback: Callable[[E], None],
        event_types: type[E] | tuple[type[E], ...] = Event,  # type: ignore[assignment]
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_types`` (all by default);
        returns a function that cancels the subscription."""
        types = event_types if isinstance(event_types, tuple) else (event_types,)
        if not types or not all(isinstance(t, type) and issubclass(t, Event) for t in types):
            raise ValueError(f"event_types must be Event subclasses, got {event_types!r}")
        if not callable(callback):
            raise ValueError(f"Event callback {callback!r} is not callable")
        entry: tuple[tuple[type[Event], ...], Callable[[Event], None]] = (types, callback)  # type: ignore[assignment]
        self._subscribers.append(entry)
        self.active = True

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
                self.active = bool(self._subscribers)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for types, callback in self._subscribers:
            if isinstance(event, types):
                try:
                    callback(event)
                except Exception:
                    logger.exception(
                        "Event callback %r failed on %s", callback, type(event).__name__
                    )
