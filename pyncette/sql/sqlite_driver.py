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
  pages. Automatic checkpoints are off on these connections; each runs a passive
  checkpoint in its thread once it has changed enough rows to have written about
  :data:`CHECKPOINT_PAGES` pages of log, as SQLite's own setting would.

The ``BEGIN IMMEDIATE`` that opens a transaction (registrations, writes that keep run
history) is such a statement too. The statements inside the transaction, and its
``COMMIT`` or ``ROLLBACK``, go to the thread as before: SQLite's advice after
``SQLITE_BUSY`` inside a transaction is to roll it back, not to run the statement again.
There, executing a statement and fetching its rows is one hand-off (SQLAlchemy's
adapter would make four: cursor, execute, fetch, close); making and closing cursors
touch no file and are done in place. A connection is used by one caller at a time
(SQLAlchemy's pool, or the repository's held connection), so the two threads never use
it at once.

What this costs: the loop does SQLite's own work for single statements (about 0.4 ms
for a claim or a commit of 100 rows here), where before it waited for a thread to do it.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import aiosqlite

CHECKPOINT_PAGES = 1_000
"""Pages of WAL a connection lets grow between its checkpoints: SQLite's own default."""

FIRST_CHECKPOINT_CHANGES = 500
"""Rows changed through a connection before its first checkpoint. A changed row rewrites
a page of the table and one of each index it is in at most, and the rows changed by one
statement share pages; each checkpoint reports the pages in the log, and the connection
scales its next interval to :data:`CHECKPOINT_PAGES` by them (``_next_interval``)."""

MAX_CHECKPOINT_CHANGES = 20_000
"""The longest interval, in rows changed (tiny rows changed in large batches)."""

_WAITS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class FusedCursor(aiosqlite.Cursor):
    """A cursor whose ``execute`` runs in place when it can, and otherwise also fetches
    the result rows in its one hand-off."""

    _conn: FusedConnection

    def __init__(self, conn: FusedConnection, cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._rows: list[Any] = []

    async def execute(self, sql: str, parameters: Any = None) -> FusedCursor:
        self._rows = await self._conn.fetch(sql, parameters or (), self._cursor)
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


def _checkpoint(connection: sqlite3.Connection) -> int:
    """Pages in the log when a PASSIVE checkpoint (which copies what no reader still
    needs and waits for no one) ran; -1 if the file is not in WAL mode."""
    cursor = connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    try:
        _busy, pages, _copied = cursor.fetchone()
        return int(pages)
    finally:
        cursor.close()


def _next_interval(interval: int, pages: int) -> int:
    """The rows to change before the next checkpoint, after ``interval`` rows changed
    made ``pages`` pages of log (which may include other connections' pages, making the
    next interval shorter, never longer): aimed at :data:`CHECKPOINT_PAGES`, at most
    doubling at a time, within ``[1, MAX_CHECKPOINT_CHANGES]``."""
    if pages < 0:  # not in WAL mode: nothing to checkpoint
        return interval
    aimed = interval * CHECKPOINT_PAGES // max(pages, 1)
    return max(1, min(aimed, interval * 2, MAX_CHECKPOINT_CHANGES))


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
        self._interval = FIRST_CHECKPOINT_CHANGES

    def cursor(self) -> _OpenCursor:  # type: ignore[override]
        return _OpenCursor(FusedCursor(self, self._conn.cursor()))

    async def fetch(
        self, sql: str, parameters: Any, cursor: sqlite3.Cursor | None = None
    ) -> list[Any]:
        """Execute ``sql`` and return its rows: in place when no transaction is open and
        the file is not locked, otherwise in the connection's thread. Without a
        ``cursor``, one is made for the statement and closed after it."""
        raw = self._conn
        own = cursor is None
        if cursor is None:
            cursor = raw.cursor()
        try:
            if not raw.in_transaction:
                try:
                    rows = self.in_place(cursor, sql, parameters)
                except sqlite3.OperationalError as error:
                    if getattr(error, "sqlite_errorcode", 0) & 0xFF not in _WAITS:
                        raise
                    # refused, not run: queue for the lock in the thread instead
                else:
                    await self.checkpoint_if_due()
                    return rows
            run = functools.partial(_execute_and_fetch, cursor, sql, parameters)
            result: list[Any] = await self._execute(run)  # type: ignore[no-untyped-call]
            return result
        except asyncio.CancelledError:
            own = False  # the thread may still be running it: leave the cursor be
            raise
        finally:
            if own:
                cursor.close()

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
        if changes - self._checkpointed >= self._interval:
            self._checkpointed = changes
            pages = await self._execute(_checkpoint, self._conn)  # type: ignore[no-untyped-call]
            self._interval = _next_interval(self._interval, pages)

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
