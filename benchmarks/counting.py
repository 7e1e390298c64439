"""Counting what one execution costs in requests: repository calls and driver round trips.

Imported by ``worker.py`` (as the sibling module ``counting``, run as a script with this
folder on ``sys.path``) for this project's runs only, and by the tests as
``benchmarks.counting``. It imports nothing from the ``benchmarks`` package.

Two figures, both counted, never estimated:

* **repository calls** -- every call of :class:`pyncette.repository.Repository` that the
  app makes, through :class:`CountingRepository` (a :class:`RepositoryProxy` around the
  app's repository), plus what the claims and commits returned (rows claimed, empty
  claims, commits refused as stale);
* **round trips** -- requests the driver sent to the server, counted where the driver
  sends them (see :func:`count_round_trips`): for SQL each statement, plus ``BEGIN`` and
  ``COMMIT`` / ``ROLLBACK`` where the driver sends them as statements of their own; for
  Redis each packed write to the socket (a command or a pipeline); for DynamoDB each HTTP
  request botocore sends (retries included).
"""

from __future__ import annotations

import contextlib
import datetime
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyncette.model import Lease
from pyncette.repository import ClaimResult, Commit, Repository, RepositoryProxy

T = TypeVar("T")


@dataclass
class Tally:
    """Counts of one process; :meth:`snapshot` and :meth:`since` give a window's share."""

    calls: Counter[str] = field(default_factory=Counter)
    """Repository calls by method name."""
    round_trips: Counter[str] = field(default_factory=Counter)
    """Driver round trips by kind (``statement``, ``begin``, ``commit``, ``rollback``,
    ``command``, ``http``)."""
    claimed: int = 0
    """Rows returned by claims."""
    empty_claims: int = 0
    """Claims that returned no row (a wasted request)."""
    stale_commits: int = 0
    """Commits refused because the lease was lost (rows claimed but lost)."""

    def snapshot(self) -> Tally:
        return Tally(
            Counter(self.calls),
            Counter(self.round_trips),
            self.claimed,
            self.empty_claims,
            self.stale_commits,
        )

    def since(self, earlier: Tally) -> Tally:
        calls = Counter(self.calls)
        calls.subtract(earlier.calls)
        trips = Counter(self.round_trips)
        trips.subtract(earlier.round_trips)
        return Tally(
            +calls,
            +trips,
            self.claimed - earlier.claimed,
            self.empty_claims - earlier.empty_claims,
            self.stale_commits - earlier.stale_commits,
        )

    def summary(self, executions: int) -> dict[str, Any]:
        """The counts and, per execution, repository calls and round trips."""
        requests = sum(self.calls.values())
        trips = sum(self.round_trips.values())
        per = (lambda value: value / executions) if executions else (lambda value: None)
        return {
            "executions": executions,
            "calls": dict(self.calls),
            "round_trips": dict(self.round_trips),
            "requests": requests,
            "trips": trips,
            "requests_per_execution": per(requests),
            "trips_per_execution": per(trips) if trips else None,
            "claimed": self.claimed,
            "empty_claims": self.empty_claims,
            "stale_commits": self.stale_commits,
        }


class CountingRepository(RepositoryProxy):
    """Counts every call of the wrapped repository into ``tally``."""

    def __init__(self, inner: Repository, tally: Tally) -> None:
        super().__init__(inner)
        self.tally = tally

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        self.tally.calls[operation] += 1
        return await call

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        result = await super().claim(group, now=now, limit=limit, lease=lease)
        self.tally.claimed += len(result.records)
        if not result.records:
            self.tally.empty_claims += 1
        return result

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        lost = await super().commit(group, commits, now=now)
        self.tally.stale_commits += len(lost)
        return lost


def counting_factory(factory: Callable[..., Any], tally: Tally) -> Callable[..., Any]:
    """``factory`` (a repository factory), its repositories counted into ``tally`` and
    their drivers' round trips too (:func:`count_round_trips`)."""

    @contextlib.asynccontextmanager
    async def counted(**options: Any) -> AsyncIterator[Repository]:
        async with factory(**options) as repository:
            count_round_trips(repository, tally)
            yield CountingRepository(repository, tally)

    return counted


# -- round trips at the driver ----------------------------------------------------------

_SINKS: dict[str, Tally] = {}
"""The tally each process-wide driver patch (installed once, by driver) feeds now."""


def count_round_trips(repository: Repository, tally: Tally) -> bool:
    """Count the round trips of ``repository``'s driver into ``tally``; ``False`` if its
    kind is not known here (the in-memory repository has none)."""
    engine = getattr(repository, "_engine", None)
    if engine is not None and hasattr(engine, "sync_engine"):
        _count_sql(engine.sync_engine, tally)
        if getattr(repository, "_driver", None) is not None:  # past SQLAlchemy's events
            _patch_once("driver_statements", tally, _patch_driver_statements)
        return True
    module = type(repository).__module__
    if module.startswith("pyncette.redis"):
        _patch_once("redis", tally, _patch_redis)
        return True
    if module.startswith("pyncette.dynamodb"):
        _patch_once("botocore", tally, _patch_botocore)
        return True
    return False


def _patch_once(name: str, tally: Tally, patch: Callable[[str], None]) -> None:
    if name not in _SINKS:
        patch(name)
    _SINKS[name] = tally


def _count_sql(sync_engine: Any, tally: Tally) -> None:
    """SQLAlchemy events. Each statement is a round trip. ``BEGIN``: PostgreSQL (asyncpg
    sends it on the first statement unless the connection is in autocommit); SQLite's
    ``BEGIN IMMEDIATE`` is a statement of its own already; MySQL begins implicitly, no
    request. ``COMMIT`` / ``ROLLBACK``: one request unless the connection is in
    autocommit (PostgreSQL) or never began (SQLite's no-``BEGIN`` option)."""
    from sqlalchemy import event

    dialect = sync_engine.dialect.name

    def transactional(conn: Any) -> bool:
        options = conn.get_execution_options()
        if dialect == "postgresql":
            return bool(options.get("isolation_level") != "AUTOCOMMIT")
        if dialect == "sqlite":
            return not options.get("pyncette_no_begin")
        return True

    def on_statement(*_: Any) -> None:
        tally.round_trips["statement"] += 1

    def on_begin(conn: Any) -> None:
        if dialect == "postgresql" and transactional(conn):
            tally.round_trips["begin"] += 1

    def on_end(kind: str) -> Callable[[Any], None]:
        def handler(conn: Any) -> None:
            if transactional(conn):
                tally.round_trips[kind] += 1

        return handler

    event.listen(sync_engine, "before_cursor_execute", on_statement)
    event.listen(sync_engine, "begin", on_begin)
    event.listen(sync_engine, "commit", on_end("commit"))
    event.listen(sync_engine, "rollback", on_end("rollback"))


def _patch_driver_statements(sink: str) -> None:
    """Each statement run on the driver's own connection (SQLite's claims and commits,
    ``pyncette.sql.precompiled``) is one statement, as one through SQLAlchemy is."""
    from pyncette.sql.precompiled import DriverStatements

    original = DriverStatements.rows

    async def rows(self: Any, *args: Any, **kwargs: Any) -> Any:
        _SINKS[sink].round_trips["statement"] += 1
        return await original(self, *args, **kwargs)

    DriverStatements.rows = rows  # type: ignore[method-assign]


def _patch_redis(sink: str) -> None:
    """Each ``send_packed_command`` is one write of one command or one pipeline."""
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def send(self: Any, *args: Any, **kwargs: Any) -> None:
        _SINKS[sink].round_trips["command"] += 1
        await original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


def _patch_botocore(sink: str) -> None:
    """Each ``Endpoint._send`` is one HTTP request (a retry is another)."""
    from botocore.endpoint import Endpoint

    original = Endpoint._send

    def send(self: Any, request: Any) -> Any:
        _SINKS[sink].round_trips["http"] += 1
        return original(self, request)

    Endpoint._send = send  # type: ignore[method-assign]
