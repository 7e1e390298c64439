"""Engines, dialect capabilities and the error edge of the SQL backend.

Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB at run time is
decided here, once, when the first connection is made; the repository only reads the
resulting :class:`Capabilities`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pyncette import retry
from pyncette.clock import real_sleep
from pyncette.errors import BackendUnavailableError
from pyncette.urls import mask_url

T = TypeVar("T")
logger = logging.getLogger(__name__)

_ASYNC_DRIVERS = {
    "postgres": ("postgresql", "asyncpg"),
    "postgresql": ("postgresql", "asyncpg"),
    "mysql": ("mysql", "asyncmy"),
    "mariadb": ("mysql", "asyncmy"),
    "sqlite": ("sqlite", "aiosqlite"),
}


SQLITE_BUSY_TIMEOUT_MS = 30_000
_NO_BEGIN = "pyncette_no_begin"
MYSQL_LOCK_TIMEOUT_S = 120


def normalize_url(url: str | URL, option: str = "url") -> URL:
    """Parse ``url`` and point it at the asyncio driver pyncette uses for its dialect.

    ``postgres://``, ``postgresql://`` and ``postgresql+asyncpg://`` all mean asyncpg;
    ``mysql://`` / ``mariadb://`` mean asyncmy; ``sqlite://`` means aiosqlite.
    """
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        raise ValueError(f"{option} is not a database URL: {mask_url(url)}") from None
    backend, _, driver = parsed.drivername.partition("+")
    known = _ASYNC_DRIVERS.get(backend)
    if known is None or driver not in ("", known[1]):
        raise ValueError(
            f"{option} must be a postgresql://, mysql:// or sqlite:// URL (driver asyncpg, "
            f"asyncmy or aiosqlite), got {mask_url(parsed)}"
        )
    parsed = parsed.set(drivername="+".join(known))
    if known[0] == "mysql" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the connected database can do; decided once at start-up."""

    one_statement_claim: bool
    """``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) … RETURNING`` may return
    columns of the subquery (the row's claimable time before the update), so a claim
    is one statement. PostgreSQL only; SQLite's RETURNING cannot see the FROM clause
    and MySQL/MariaDB cannot return from an UPDATE at all."""
    returning: bool
    """``UPDATE`` and ``DELETE`` take ``RETURNING`` (PostgreSQL, SQLite 3.35+), so a
    guarded batch write reports the rows it changed without locking them first."""
    row_locks: bool
    """``SELECT … FOR UPDATE`` locks rows. SQLite has no row locks; its transactions
    start with ``BEGIN IMMEDIATE``, which serialises writers on the whole file."""
    skip_locked: bool
    """``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8, MariaDB 10.6+): concurrent
    claims pass over each other's rows instead of queueing behind them."""
    migration_lock: str
    """How start-up migrations are serialised: ``advisory`` (PostgreSQL transaction
    advisory lock), ``named`` (MySQL ``GET_LOCK``) or ``immediate`` (SQLite write lock)."""
    autocommit: dict[str, Any]
    """Execution options under which a single statement runs without ``BEGIN`` /
    ``COMMIT`` round trips: ``AUTOCOMMIT`` isolation on PostgreSQL (client-side with
    asyncpg); no ``BEGIN IMMEDIATE`` on SQLite. Empty on MySQL, where switching
    autocommit costs more round trips than the ``COMMIT`` it saves."""
    array_params: bool = False
    """Arrays bind as one parameter and ``unnest(:a, :b, …) AS v(…)`` joins them as rows
    (PostgreSQL): a batch write is one fixed-shape statement with a few array
    parameters, prepared once, instead of hundreds of scalar parameters."""
    upsert_where: bool = True
    """``INSERT … ON CONFLICT … DO UPDATE SET … WHERE …`` (PostgreSQL, SQLite 3.24+):
    a registration updates only the rows it may and, with ``RETURNING``, reports them.
    Otherwise (MySQL/MariaDB) ``INSERT … ON DUPLICATE KEY UPDATE`` with guarded
    (``IF``) assignments, evaluated left to right."""
    notify: bool = False
    """``LISTEN``/``NOTIFY`` between sessions (PostgreSQL): the wake-up channel of
    ``instant_wakeups``."""
    json_params: bool = False
    """Lists bind as one JSON array and ``json_each`` reads them back as rows (SQLite
    3.38+, where JSON is built in): a statement naming a batch of rows is compiled once,
    not rendered again with one placeholder per name at every execution."""
    held_connection: bool = False
    """Statements that run on their own go through one connection the repository keeps
    (:class:`HeldConnection`; SQLite) instead of the pool."""
    driver_statements: bool = False
    """Claims and commits run as their compiled text on the driver's own connection,
    past SQLAlchemy's per-execution work (:mod:`pyncette.sql.precompiled`; SQLite with
    ``RETURNING`` and JSON parameters, where the database runs in this process)."""
    analyse_fresh: bool = False
    """A table never analysed is analysed once the repository has registered
    :data:`~pyncette.sql.repository.ANALYSE_AFTER` rows (PostgreSQL). Until its statistics
    exist, PostgreSQL's planner guesses that a group holds a handful of rows and joins a
    commit's batch to the table by hashing the whole group (3 ms per commit of 100 rows
    in a group of 20,000 here, 1.3 ms through the primary key once analysed);
    autovacuum would analyse it only within about a minute."""
    delete_subquery: bool = True
    """``DELETE … WHERE id IN (SELECT … FROM the same table …)`` looks up the few ids
    selected. MySQL/MariaDB refuse a subquery on the table being deleted from, or run it
    against every row of the table; there history trimming joins its candidates
    (multi-table ``DELETE``) and the retention sweep is a ``DELETE … LIMIT``."""


def detect_capabilities(dialect: Dialect) -> Capabilities:
    """Capabilities of an initialised (connected) dialect."""
    if dialect.name == "postgresql":
        return Capabilities(
            True,
            True,
            True,
            True,
            "advisory",
            {"isolation_level": "AUTOCOMMIT"},
            array_params=True,
            notify=True,
            analyse_fresh=True,
        )
    if dialect.name in ("mysql", "mariadb"):
        version = tuple(dialect.server_version_info or ())
        minimum = (10, 6) if getattr(dialect, "is_mariadb", False) else (8, 0, 1)
        return Capabilities(
            False,
            False,
            True,
            version >= minimum,
            "named",
            {},
            upsert_where=False,
            delete_subquery=False,
        )
    if dialect.name == "sqlite":
        if tuple(dialect.server_version_info or ()) < (3, 25):
            raise ValueError(
                "pyncette needs SQLite 3.25 or newer (INSERT … ON CONFLICT, window functions)"
            )
        returning = bool(dialect.update_returning and dialect.delete_returning)
        json_params = tuple(dialect.server_version_info or ()) >= (3, 38)
        return Capabilities(
            False,
            returning,
            False,
            False,
            "immediate",
            {_NO_BEGIN: True},
            json_params=json_params,
            held_connection=True,
            driver_statements=json_params and returning,
        )
    raise ValueError(f"Unsupported SQL dialect {dialect.name!r}")


def create_engine(url: URL, *, pool_size: int) -> AsyncEngine:
    """An async engine for a URL from :func:`normalize_url`.

    No pre-ping (it would cost a round trip per call): a connection found dead is
    retried once by the repository instead, see :func:`retry_dropped`. Every use ends its
    transaction explicitly, so the pool does not roll back again on check-in.
    """
    options: dict[str, Any] = {"pool_reset_on_return": None}
    if url.get_backend_name() == "sqlite":
        from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

        from pyncette.sql.sqlite_driver import async_creator

        args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(url)
        options["async_creator"] = async_creator(
            args, kwargs, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS
        )
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, **options)
        _take_over_sqlite_transactions(engine)
        return engine
    if url.get_backend_name() == "mysql":
        # READ COMMITTED: no gap locks, so concurrent registrations do not deadlock.
        options.update(isolation_level="READ COMMITTED", pool_recycle=3600)
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, **options)


def _take_over_sqlite_transactions(engine: AsyncEngine) -> None:
    """``BEGIN IMMEDIATE`` for every transaction (the driver sets the busy timeout).

    The sqlite3 module's own transaction handling begins lazily and only before DML,
    so a read-then-write transaction could fail to upgrade its lock when another
    process wrote in between. Taking the write lock up front makes every transaction
    serialisable across processes sharing the file; the busy timeout queues them.
    Nothing here takes a lock, so opening a connection never fails on a busy file;
    the switch to WAL is made once, at start-up, by :func:`enable_wal`.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if not connection.get_execution_options().get(_NO_BEGIN):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _is_sqlite_busy(error: BaseException) -> bool:
    """Whether SQLite refused ``error``'s statement because another connection held
    the file (``SQLITE_BUSY`` / ``SQLITE_LOCKED``)."""
    return isinstance(error, exc.OperationalError) and "is locked" in str(error.orig)


async def enable_wal(engine: AsyncEngine) -> None:
    """Put the SQLite file in WAL mode, so readers never wait for the writer.

    WAL is a property of the file: once set it holds for every later connection, so
    it is set once per start-up rather than per connection. Switching a file from a
    rollback journal needs it to be free of writers, and SQLite reports a busy file
    at once here instead of waiting out the busy timeout; so retry with the
    :data:`~pyncette.retry.STARTUP` back-off for as long as the busy timeout.
    """

    async def switch() -> None:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{_NO_BEGIN: True})
            await conn.exec_driver_sql("PRAGMA journal_mode = WAL")

    await retry.retry(
        switch,
        policy=retry.STARTUP,
        attempts=retry.STARTUP.attempts_within(SQLITE_BUSY_TIMEOUT_MS / 1000),
        sleep=real_sleep,
        retry_on=(exc.OperationalError,),
        retry_if=lambda error, _: _is_sqlite_busy(error),
        on_retry=functools.partial(
            log_retry, logging.DEBUG, "SQLite file busy while switching to WAL"
        ),
    )


def log_retry(level: int, what: str, attempt: int, error: BaseException, delay: float) -> None:
    """An ``on_retry`` for :func:`pyncette.retry.retry` (bind ``level`` and ``what``); it
    logs the driver's message only, not the statement and its parameters."""
    cause = getattr(error, "orig", None) or error
    logger.log(level, "%s (attempt %d); retrying in %.3f s: %s", what, attempt, delay, cause)


def _lock_key(table: str) -> int:
    digest = hashlib.sha256(f"pyncette:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def migration_lock(connection: Connection, table: str, caps: Capabilities) -> Iterator[None]:
    """Hold a database-wide lock named after ``table`` (call with no open transaction).

    Instances starting at once against an empty database queue here, so exactly one of
    them creates the table and the others find it done.
    """
    if caps.migration_lock == "advisory":
        # released by the COMMIT that ends the migration transaction
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(table)})
        yield
    elif caps.migration_lock == "named":
        name = f"pyncette:{table}"
        got = connection.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": name, "timeout": MYSQL_LOCK_TIMEOUT_S},
        ).scalar()
        if got != 1:
            raise BackendUnavailableError(f"Timed out waiting for the migration lock {name!r}")
        try:
            yield
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
            connection.commit()
    else:
        # the first statement's BEGIN IMMEDIATE takes SQLite's write lock
        connection.execute(text("SELECT 1"))
        yield


class PooledConnections:
    """Each operation on a connection of ``engine``'s pool, in a transaction of its own
    (``BEGIN``/``COMMIT``, unless the engine's execution options say otherwise)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._engine.begin() as conn:
            return await operation(conn)

    async def close(self) -> None:
        """Nothing to give back: the pool is the engine's, closed by whoever made it."""


async def run_retrying(
    connections: PooledConnections | HeldConnection,
    operation: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int,
    failed: BaseException | None = None,
) -> T:
    """Run ``operation`` on ``connections`` (see :func:`retry_dropped`); a transaction
    the database rolled back as a conflict (:func:`is_conflict`) is run again, up to
    ``attempts`` times in all (:data:`~pyncette.retry.CONFLICT` back-off). ``failed``:
    the caller already ran it once, and it raised this (see
    :func:`pyncette.retry.retry`)."""
    pending = failed

    def attempt() -> Awaitable[T]:
        nonlocal pending
        error, pending = pending, None  # the caller's failure continues the first attempt
        return retry_dropped(connections, operation, failed=error)

    return await retry.retry(
        attempt,
        policy=retry.CONFLICT,
        attempts=attempts,
        sleep=real_sleep,
        retry_if=_conflict_retry_if,
        on_retry=functools.partial(log_retry, logging.DEBUG, "Transaction conflict"),
    )


def _conflict_retry_if(error: BaseException, _attempt: int) -> bool:
    return is_conflict(error)


async def retry_dropped(
    connections: PooledConnections | HeldConnection,
    operation: Callable[[AsyncConnection], Awaitable[T]],
    *,
    failed: BaseException | None = None,
) -> T:
    """Run ``operation`` on ``connections``; if the connection turns out to be dead (a
    database restart, a connection the server killed), run it once more
    (:data:`~pyncette.retry.SQL_RECONNECT_ATTEMPTS`). ``failed``: as for
    :func:`pyncette.retry.retry`.

    SQLAlchemy invalidates the whole pool when it sees a disconnect, so the second run
    gets a fresh connection. A connection dropped *while* a statement ran may have
    applied it; a repeated claim or commit then finds its rows already changed and
    reports them as not claimed / lease lost, which the core handles.
    """

    return await retry.retry(
        functools.partial(connections.run, operation),
        policy=retry.RECONNECT,
        attempts=retry.SQL_RECONNECT_ATTEMPTS,
        sleep=real_sleep,
        retry_on=(exc.DBAPIError,),
        retry_if=lambda error, _: bool(getattr(error, "connection_invalidated", False)),
        on_retry=functools.partial(log_retry, logging.INFO, "Database connection was dropped"),
        failed=failed,
    )


class HeldConnection:
    """One connection kept checked out of ``engine`` for statements that run on their
    own (no ``BEGIN``/``COMMIT``), used by one caller at a time.

    On SQLite, checking a connection out of SQLAlchemy's pool, beginning and ending its
    logical transaction and checking it back in cost about as much CPU as the statement
    itself, and writers take turns on the file anyway; so single statements queue here,
    in the event loop, instead of in SQLite's busy handler. A connection whose operation
    failed or was cancelled is invalidated in the background (its statement may still be
    running in the driver's thread, waiting for another process's lock) and the next
    caller opens another.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._turn: asyncio.Lock | None = None
        self._discarding: set[asyncio.Future[None]] = set()

    async def run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            conn = self._conn
            if conn is None:
                conn = self._conn = await self._engine.connect()
            try:
                return await operation(conn)
            except BaseException:
                self._conn = None
                discarding = asyncio.ensure_future(_discard(conn))
                self._discarding.add(discarding)
                discarding.add_done_callback(self._discarding.discard)
                raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if self._discarding:
            await asyncio.wait(self._discarding)


async def _discard(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.invalidate()
        await conn.close()


_CONFLICTS = {1213, "40P01", "40001"}
"""MySQL's deadlock error; PostgreSQL's deadlock and serialization-failure SQLSTATEs."""


def is_conflict(error: BaseException) -> bool:
    """Whether the database rolled the transaction back as a deadlock victim or a
    unique-key race, so that running it again is safe and likely to succeed."""
    if not isinstance(error, exc.DBAPIError):
        return False
    if isinstance(error, exc.IntegrityError):
        return True
    orig = error.orig
    code = orig.args[0] if orig is not None and orig.args else None
    return code in _CONFLICTS or getattr(orig, "sqlstate", None) in _CONFLICTS


_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError)


def unavailable(error: BaseException, where: str) -> BackendUnavailableError | None:
    """The adapter edge: the :class:`BackendUnavailableError` a connection failure
    becomes; ``None`` for any other error (raised as it is).

    ``where`` must already be masked. Driver messages name hosts and users but never
    passwords; the message is built from them and the masked location only.
    """
    if isinstance(error, exc.DBAPIError):
        if not (error.connection_invalidated or isinstance(error, _UNAVAILABLE)):
            return None
        cause: BaseException = error.orig if error.orig is not None else error
    elif isinstance(error, _UNAVAILABLE):
        cause = error
    else:
        return None
    return BackendUnavailableError(f"{where} is unavailable: {type(cause).__name__}: {cause}")


@asynccontextmanager
async def translate_errors(where: str) -> AsyncIterator[None]:
    """:func:`unavailable` around the block."""
    try:
        yield
    except Exception as error:
        translated = unavailable(error, where)
        if translated is None:
            raise
        raise translated from error
