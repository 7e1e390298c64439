"""aiosqlite with one thread hand-off per statement instead of four.

aiosqlite runs every call of the ``sqlite3`` module in the connection's own thread and
waits for it, and SQLAlchemy's adapter makes four such calls per statement: create a
cursor, execute, fetch the rows, close the cursor. Each hand-off is a queue put, a
thread wake-up and a callback into the event loop, costing about as much as running a
small statement on a local file.

Here only work that may wait for the file runs in the thread: executing a statement
(which also waits out the busy timeout while another process writes) and fetching its
rows, in one hand-off; commit and rollback of an open transaction as before. Creating and
closing a cursor, and ending a transaction that was never begun (a statement run in
autocommit), are done in place: they touch no file and take no lock. A connection is
used by one caller at a time (SQLAlchemy's pool), so the two threads never use it at
once.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import aiosqlite


class FusedCursor(aiosqlite.Cursor):
    """A cursor whose ``execute`` also fetches the result rows, in one hand-off."""

    def __init__(self, conn: aiosqlite.Connection, cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._rows: list[Any] = []

    async def execute(self, sql: str, parameters: Any = None) -> FusedCursor:
        run = functools.partial(_execute_and_fetch, self._cursor, sql, parameters or ())
        self._rows = await self._conn._execute(run)  # type: ignore[no-untyped-call]
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


class FusedConnection(aiosqlite.Connection):
    """An aiosqlite connection handing out :class:`FusedCursor` s."""

    def cursor(self) -> _OpenCursor:  # type: ignore[override]
        return _OpenCursor(FusedCursor(self, self._conn.cursor()))

    async def commit(self) -> None:
        # a statement run without BEGIN committed itself: nothing to hand off
        if self._conn.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        if self._conn.in_transaction:
            await super().rollback()


def async_creator(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Callable[[], Awaitable[FusedConnection]]:
    """``create_async_engine(async_creator=...)`` for the ``sqlite3.connect`` arguments
    SQLAlchemy derives from the URL. ``check_same_thread`` is off: cursors are made and
    closed in the event loop's thread."""
    connector = functools.partial(sqlite3.connect, *args, **{**kwargs, "check_same_thread": False})

    async def connect() -> FusedConnection:
        connection = FusedConnection(connector, 64)
        connection._thread.daemon = True  # as SQLAlchemy does with aiosqlite's own
        await connection
        return connection

    return connect
