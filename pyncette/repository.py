"""The lease interface every storage backend implements.

A backend stores *rows*. A row is identified by ``(group, name)``:

* ``group`` is an opaque string chosen by the core. All static tasks of an app share
  one group; each dynamic task (or each partition of a partitioned task) is a group
  of its own holding that task's instances. Backends may rely on a group being the
  unit of locality (one partition key, one cluster slot) and on every call touching
  exactly one group.
* ``name`` is the task name (static tasks) or the instance name (dynamic tasks);
  1 to 255 characters.

Each row holds:

* ``spec`` -- an opaque JSON document (``None`` for static tasks) stored verbatim;
* ``scheduled_at`` -- when the next run is due (UTC, microsecond precision);
* ``lease_duration`` -- how long a claim of this row lasts;
* ``locked_by`` / ``locked_until`` -- the lease of the current holder, if any.

A row is *claimable* at ``now`` when it is unlocked and ``scheduled_at <= now``, or
locked with ``locked_until <= now`` (an expired lease). Backends keep an index on
the time a row becomes claimable (``locked_until`` when locked, ``scheduled_at``
otherwise) per group, so that claiming costs O(claimed), not O(stored).

That time is called ``due_at`` in the code of every backend (and ``next_due_at`` in
:class:`ClaimResult`). It is stored as the SQL column ``due_at``, as the score in the
Redis sorted set ``...:due``, and in DynamoDB as the attribute and local secondary index
``ready_at``, the name the user's table schema fixes (see ``pyncette.dynamodb.items``).

The backend makes no decisions: what the next run is, what happens on failure and
at-most-once versus at-least-once all live in the core. Every method is atomic with
respect to concurrent callers in this and other processes. All datetimes passed in
and returned are timezone-aware UTC; backends must keep at least millisecond
precision and return exactly what they store.

Wake-ups (optional): a backend that can carry messages between processes (PostgreSQL
``LISTEN/NOTIFY``, Redis pub/sub) overrides :attr:`Repository.wake_ups`,
:meth:`Repository.announce` and :meth:`Repository.listen`, so that a row scheduled
sooner by one instance starts on the others without waiting for their next poll.
Messages may be lost (a dropped listener misses them); polling stays the guarantee.

Run outcomes and history: a :class:`Commit` (and :meth:`Repository.unlock`) may carry
the run's *outcome*, an opaque JSON text the core writes and reads back (see
``pyncette.outcome``). The backend stores it with the row in the same write, returns it
from :meth:`Repository.get` and :meth:`Repository.list` as :attr:`Record.outcome`, and,
when the write also carries a :class:`History`, appends it to the row's run history in
the same round trip, read back with :meth:`Repository.history`.

Errors: a backend raises :class:`~pyncette.errors.BackendUnavailableError` (or lets
its driver's connection errors through) when it cannot reach storage; the core logs,
backs off and retries. Refusals (stale lease, locked row) are reported through
return values, never applied.
"""

from __future__ import annotations

import abc
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pyncette.model import ContinuationToken, Lease
from pyncette.timeutil import from_epoch_us, to_epoch_us

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Registration:
    """A row to create or update with :meth:`Repository.register`."""

    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    lease_duration: datetime.timedelta


@dataclass(frozen=True, slots=True)
class History:
    """How much run history to keep: the newest ``keep`` entries of each row, each for at
    least ``retention`` after it was written. A backend may drop an entry once ``keep``
    newer ones exist for its row or once it is older than ``retention`` (the core skips
    older entries when reading), and need not do so at once."""

    keep: int
    retention: datetime.timedelta


class Commit(NamedTuple):
    """The outcome of one execution, applied with :meth:`Repository.commit` (a tuple,
    like :class:`Record`: one is built per execution)."""

    name: str
    lease: Lease
    next_at: datetime.datetime | None
    """The next run; ``None`` deletes the row (a one-off task is done)."""
    outcome: str | None = None
    """Replaces the row's stored outcome in the same write; ``None`` leaves it as it is."""
    history: History | None = None
    """With an ``outcome``: also append it to the row's run history (also when the row
    is deleted: the history outlives it, within its retention)."""


new_tuple = tuple.__new__
"""Builds a named tuple past the Python-level ``__new__`` it is given, a call less for
each of the many built per execution: ``new_tuple(Commit, (field, ...))``, with every
field in order, defaulted ones included."""


class Record(NamedTuple):
    """A stored row, as returned by claims, reads and listings (a tuple: a claim builds
    one per row, and a tuple is built in a third of the time of a frozen dataclass)."""

    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    locked_until: datetime.datetime | None
    locked_by: Lease | None
    outcome: str | None = None
    """The last outcome written with a commit or unlock (claims may leave it ``None``)."""


class StoredRow:
    """A mixin for a backend's own row class (with these six attributes): what every
    backend derives from a row alike."""

    __slots__ = ()
    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    locked_by: Lease | None
    locked_until: datetime.datetime | None
    outcome: str | None

    @property
    def due_at(self) -> datetime.datetime:
        """When the row becomes claimable: the lease's expiry while it is locked, its
        scheduled run otherwise (see the module docstring)."""
        return self.locked_until if self.locked_until is not None else self.scheduled_at

    def record(self) -> Record:
        return Record(
            self.name, self.spec, self.scheduled_at, self.locked_until, self.locked_by, self.outcome
        )


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The rows one :meth:`Repository.claim` call locked."""

    records: list[Record]
    """Claimed rows, soonest due first; each carries the new lease and its expiry."""
    next_due_at: datetime.datetime | None
    """When the group's next unclaimed row becomes claimable, if the backend knows it
    cheaply; ``None`` when the group is empty or the backend does not say. The core uses
    it only to wake up early; correctness never depends on it."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`Repository.list`."""

    records: list[Record]
    continuation_token: ContinuationToken | None


class Repository(abc.ABC):
    """Abstract storage of task rows, guarded by leases. See the module docstring."""

    @abc.abstractmethod
    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        """Lock up to ``limit`` rows of ``group`` that are claimable at ``now``.

        Rows are taken in order of the time they became claimable. Each claimed row is
        locked with ``locked_by = lease`` and ``locked_until = now + its lease_duration``
        and returned with that new lease; ``scheduled_at`` is left as it was. Two
        concurrent claims (here or in another process) never return the same row
        unless its lease expired in between. ``limit`` is at least 1.
        """

    @abc.abstractmethod
    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        """Apply finished executions; return the names whose lease was stale.

        For each commit whose row is still locked by ``commit.lease`` (expired or not,
        as long as nobody claimed it since): set ``scheduled_at = next_at`` and unlock,
        or delete the row when ``next_at`` is ``None``. A commit whose row is missing or
        locked by another lease changes nothing and its name is returned. Each commit is
        atomic; the batch as a whole need not be.
        """

    @abc.abstractmethod
    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        """Move the lease's expiry to ``locked_until`` (a heartbeat).

        Returns ``False``, changing nothing, if the row is missing or not locked by
        ``lease``.
        """

    @abc.abstractmethod
    async def unlock(
        self,
        group: str,
        name: str,
        lease: Lease,
        *,
        outcome: str | None = None,
        history: History | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        """Release the lease without changing ``scheduled_at`` (retry on the next tick).

        ``outcome`` and ``history`` are stored as with a :class:`Commit` (``now`` is
        then given: the time of the write). Returns ``False``, changing nothing, if the
        row is missing or not locked by ``lease``.
        """

    @abc.abstractmethod
    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        """Create rows, or update existing ones; return the names left untouched.

        A missing row is created unlocked, with the registration's values.

        Without ``force``, an existing row gets the new ``spec`` and ``lease_duration``,
        ``scheduled_at = min(old, new)`` (so re-registering never postpones a run) and no
        lease (an expired one is cleared). An existing row whose lease is live
        (``locked_until > now``) is left untouched instead, and its name returned.

        With ``force`` (which applies to the whole call), every existing row, locked or
        not, gets the new ``spec`` and ``lease_duration`` and ``scheduled_at = new``
        exactly, even when that is later than the stored run, and its lease is cleared
        in the same write: the old holder's later commit, heartbeat or unlock is refused
        and changes nothing. Nothing is returned.

        Each row is checked and written atomically (no claim, commit or other
        registration can come in between); the batch as a whole need not be. A name
        given twice in one call is registered twice, in order: without ``force`` it keeps
        the soonest of the runs and the last spec, with ``force`` the last registration
        wins; if it is left untouched, it is returned once per occurrence.
        """

    @abc.abstractmethod
    async def unregister(self, group: str, name: str) -> bool:
        """Delete the row; return whether it existed. A live lease does not prevent it."""

    @property
    def wake_ups(self) -> bool:
        """Whether :meth:`announce` reaches the :meth:`listen` of other processes."""
        return False

    async def announce(self, group: str, due_at: datetime.datetime) -> None:  # noqa: B027
        """Tell every process listening on this store that a row of ``group`` is due at
        ``due_at``. Best effort; by default nothing is sent."""

    async def listen(self, wake: Callable[[str, datetime.datetime], None]) -> None:
        """Call ``wake(group, due_at)`` for each :meth:`announce` made on this store
        (this process's own included), until cancelled. Raises when the channel fails
        (the core starts it again after a pause). Only called if :attr:`wake_ups`."""
        raise NotImplementedError(f"{type(self).__name__} has no wake-ups")

    @abc.abstractmethod
    async def get(self, group: str, name: str) -> Record | None:
        """Return the row, or ``None`` if it does not exist."""

    @abc.abstractmethod
    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` outcomes of the row's run history, newest first (also
        after the row was deleted, within the entries' retention; see
        :class:`History`). ``limit`` is at least 1."""

    @abc.abstractmethod
    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        """Return up to ``limit`` rows of ``group`` in a stable order, and a token for the
        rest (``None`` when there are no more). Rows added or removed while paging may or
        may not appear, but no row present throughout is skipped or repeated."""


def fold_registrations(registrations: Sequence[Registration], *, force: bool) -> list[Registration]:
    """``registrations`` with each name once, as :meth:`Repository.register` would leave
    the row after writing them in order: the last spec and lease duration, and (unless
    ``force``) the soonest run. For backends that write a batch as one set of rows."""
    folded: dict[str, Registration] = {}
    for reg in registrations:
        earlier = folded.get(reg.name)
        if not force and earlier is not None and earlier.scheduled_at < reg.scheduled_at:
            reg = Registration(reg.name, reg.spec, earlier.scheduled_at, reg.lease_duration)
        folded[reg.name] = reg
    return list(folded.values())


class RepositoryProxy(Repository):
    """A repository that forwards every call to another through :meth:`around`.

    Subclasses override :meth:`around` (or :meth:`around_group`, which is also told the
    group) to observe or alter calls (metrics, test instrumentation) without restating
    the whole interface.
    """

    def __init__(self, inner: Repository) -> None:
        self.inner = inner

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        """Run one call of the wrapped repository; ``operation`` is the method name."""
        return await call

    async def around_group(self, operation: str, group: str, call: Awaitable[T]) -> T:
        """Run one call on ``group``; by default the same as :meth:`around`."""
        return await self.around(operation, call)

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        call = self.inner.claim(group, now=now, limit=limit, lease=lease)
        return await self.around_group("claim", group, call)

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        return await self.around_group("commit", group, self.inner.commit(group, commits, now=now))

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        call = self.inner.extend(group, name, lease, locked_until=locked_until)
        return await self.around_group("extend", group, call)

    async def unlock(
        self,
        group: str,
        name: str,
        lease: Lease,
        *,
        outcome: str | None = None,
        history: History | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        call = self.inner.unlock(group, name, lease, outcome=outcome, history=history, now=now)
        return await self.around_group("unlock", group, call)

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        call = self.inner.register(group, registrations, now=now, force=force)
        return await self.around_group("register", group, call)

    async def unregister(self, group: str, name: str) -> bool:
        return await self.around_group("unregister", group, self.inner.unregister(group, name))

    async def get(self, group: str, name: str) -> Record | None:
        return await self.around_group("get", group, self.inner.get(group, name))

    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        return await self.around_group(
            "history", group, self.inner.history(group, name, limit=limit)
        )

    @property
    def wake_ups(self) -> bool:
        return self.inner.wake_ups

    async def announce(self, group: str, due_at: datetime.datetime) -> None:
        await self.around_group("announce", group, self.inner.announce(group, due_at))

    async def listen(self, wake: Callable[[str, datetime.datetime], None]) -> None:
        await self.inner.listen(wake)

    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        call = self.inner.list(group, limit=limit, continuation_token=continuation_token)
        return await self.around_group("list", group, call)


def wake_up_message(group: str, due_at: datetime.datetime) -> str:
    """The text a backend sends for :meth:`Repository.announce` (JSON, ASCII only)."""
    return json.dumps([group, to_epoch_us(due_at)])


def deliver_wake_up(message: str | bytes, wake: Callable[[str, datetime.datetime], None]) -> None:
    """Call ``wake`` with what :func:`wake_up_message` encoded in ``message``; a message
    that is not one (another program on the same channel) is logged and dropped."""
    try:
        group, micros = json.loads(message)
        if not isinstance(group, str) or isinstance(micros, bool) or not isinstance(micros, int):
            raise TypeError("not [group, microseconds]")
        due_at = from_epoch_us(micros)
    except (ValueError, TypeError, OverflowError) as error:
        logger.debug("Ignored a wake-up message that is not pyncette's: %r (%s)", message, error)
        return
    wake(group, due_at)


RepositoryFactory = Callable[..., AbstractAsyncContextManager[Repository]]
"""Called with the app's backend options (``Pyncette(**options)``); returns an async
context manager that yields a ready :class:`Repository` and closes it on exit.
Factories validate their options with :func:`check_options`."""

BACKEND_PREFIXES = ("sqlite_", "postgres_", "mysql_", "redis_", "dynamodb_")


def check_options(prefix: str, options: Mapping[str, Any], known: AbstractSet[str]) -> None:
    """Reject options a backend would silently drop.

    Options of *other* backends (``redis_url`` given to SQLite, say) are ignored, so a
    configuration can name several backends and pick one with ``repository_factory``.
    A misspelt option of this backend, or one that belongs to no backend at all, is a
    ``ValueError`` naming it.
    """
    unknown = sorted(
        key
        for key in options
        if key not in known and (key.startswith(prefix) or not key.startswith(BACKEND_PREFIXES))
    )
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)}; the {prefix.rstrip('_')} backend takes "
            f"{', '.join(sorted(known)) or 'no options'}"
        )
