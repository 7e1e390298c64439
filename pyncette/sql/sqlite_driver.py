"""aiosqlite, with statements that cannot wait run in place.

aiosqlite runs every call of the ``sqlite3`` module in the connection's own thread and
waits for it. Each hand-off is a queue put, a thread wake-up and a callback into the
event loop: on a 2-core machine about 0.25 ms, as long as SQLite takes to claim or
commit a batch of 100 rows, and the loop sits idle meanwhile.

A statement that runs on its own (no transaction open on the connection) is run in the
event loop's thread instead, with SQLite's busy timeout set to zero for it. Only two
things could make it wait, and neither is let to:

- **Another connection holding the write lock.** With no busy timeout SQLite refuses at
  once (``SQLITE_BUSY``) and changes nothing, so the statement is sent to the thread and
  run again there, where the busy timeout queues it behind the other writer.
- **A WAL checkpoint** (copying the log back into the database file, with an fsync),
  which SQLite would otherwise run inside the statement that fills the log past 1,000
  pages. Automatic checkpoints are off on these connections; after every
  :data:`CHECKPOINT_CHANGES` rows changed through one, it runs a passive checkpoint in
  its thread, which keeps the log about as short as SQLite's own setting would.

Statements inside a transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, e.g. registrations),
and the ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` themselves, go to the thread as before:
SQLite's advice after ``SQLITE_BUSY`` inside a transaction is to roll it back, not to
run the statement again. There, executing a statement and fetching its rows is one
hand-off (SQLAlchemy's adapter would make four: cursor, execute, fetch, close); making
and closing cursors touch no file and are done in place. A connection is used by one
caller at a time (SQLAlchemy's pool, or the repository's held connection), so the two
threads never use it at once.

What this costs: the loop does SQLite's own work for single statements (about 0.4 ms
for a claim or a commit of 100 rows here), where before it waited for a thread to do it.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import aiosqlite

CHECKPOINT_CHANGES = 2_000
"""Rows changed through one connection between two of its passive checkpoints. A row
changed here rewrites a page of the table and one of each of its two indexes at most, and
changes batched in one statement share pages, so the log stays near SQLite's default of
a checkpoint every 1,000 pages (``tests/contract/test_sqlite_driver.py`` checks its size
under a stream of batches)."""

_WAITS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class FusedCursor(aiosqlite.Cursor):
    """A cursor whose ``execute`` runs in place when it can, and otherwise also fetches
    the result rows in its one hand-off."""

    _conn: FusedConnection

    def __init__(self, conn: FusedConnection, cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._rows: list[Any] = []

    async def execute(self, sql: str, parameters: Any = None) -> FusedCursor:
        conn = self._conn
        parameters = parameters or ()
        if not conn._conn.in_transaction:
            try:
                self._rows = conn.in_place(self._cursor, sql, parameters)
            except sqlite3.OperationalError as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF not in _WAITS:
                    raise
                # refused, not run: queue for the lock in the thread instead
            else:
                await conn.checkpoint_if_due()
                return self
        run = functools.partial(_execute_and_fetch, self._cursor, sql, parameters)
        self._rows = await conn._execute(run)  # type: ignore[no-untyped-call]
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self._cursor.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def close(self) -> None:
        self._rows = []
        self._cursor.close()


def _execute_and_fetch(cursor: sqlite3.Cursor, sql: str, parameters: Any) -> list[Any]:
    cursor.execute(sql, parameters)
    return cursor.fetchall() if cursor.description is not None else []


class _OpenCursor:
    """What ``Connection.cursor()`` returns: awaitable and an async context manager, as
    aiosqlite's is (SQLAlchemy enters it)."""

    def __init__(self, cursor: FusedCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, FusedCursor]:
        return self._ready().__await__()

    async def _ready(self) -> FusedCursor:
        return self._cursor

    async def __aenter__(self) -> FusedCursor:
        return self._cursor

    async def __aexit__(self, *exc_info: object) -> None:
        await self._cursor.close()


def _checkpoint(connection: sqlite3.Connection) -> None:
    # PASSIVE: copies what no reader still needs, waits for no one
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()


class FusedConnection(aiosqlite.Connection):
    """An aiosqlite connection handing out :class:`FusedCursor` s, that checkpoints the
    WAL itself (see the module's docstring)."""

    def __init__(
        self,
        connector: Callable[[], sqlite3.Connection],
        busy_timeout_ms: int,
    ) -> None:
        super().__init__(connector, 64)
        self._wait = f"PRAGMA busy_timeout = {busy_timeout_ms:d}"
        self._checkpointed = 0  # the connection's total_changes at its last checkpoint

    def cursor(self) -> _OpenCursor:  # type: ignore[override]
        return _OpenCursor(FusedCursor(self, self._conn.cursor()))

    def in_place(self, cursor: sqlite3.Cursor, sql: str, parameters: Any) -> list[Any]:
        """Run a statement outside a transaction in this thread, refusing to wait for a
        lock (``sqlite3.OperationalError``, ``SQLITE_BUSY``: nothing was changed)."""
        raw = self._conn
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            return _execute_and_fetch(cursor, sql, parameters)
        finally:
            raw.execute(self._wait)

    async def checkpoint_if_due(self) -> None:
        """A passive checkpoint in the connection's thread, once enough rows changed
        through it since its last one. It runs between this connection's statements, so
        once it is done the next write starts the log again from its beginning (a
        checkpoint that ran alongside writes would never catch up with them)."""
        changes = self._conn.total_changes
        if changes - self._checkpointed >= CHECKPOINT_CHANGES:
            self._checkpointed = changes
            await self._execute(_checkpoint, self._conn)  # type: ignore[no-untyped-call]

    async def commit(self) -> None:
        # a statement run without BEGIN committed itself: nothing to hand off
        if self._conn.in_transaction:
            await super().commit()
            await self.checkpoint_if_due()

    async def rollback(self) -> None:
        if self._conn.in_transaction:
            await super().rollback()


def async_creator(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, busy_timeout_ms: int
) -> Callable[[], Awaitable[FusedConnection]]:
    """``create_async_engine(async_creator=...)`` for the ``sqlite3.connect`` arguments
    SQLAlchemy derives from the URL. ``check_same_thread`` is off: statements run in the
    event loop's thread as well as the connection's own. ``busy_timeout_ms`` is how long
    a statement run in the thread waits for another writer."""
    connector = functools.partial(
        _connect, args, {**kwargs, "check_same_thread": False}, busy_timeout_ms
    )

    async def connect() -> FusedConnection:
        connection = FusedConnection(connector, busy_timeout_ms)
        connection._thread.daemon = True  # as SQLAlchemy does with aiosqlite's own
        await connection
        return connection

    return connect


def _connect(
    args: Sequence[Any], kwargs: Mapping[str, Any], busy_timeout_ms: int
) -> sqlite3.Connection:
    connection: sqlite3.Connection = sqlite3.connect(*args, **kwargs)
    connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}").close()
    # checkpoints are run by FusedConnection, in its thread
    connection.execute("PRAGMA wal_autocheckpoint = 0").close()
    return connection
