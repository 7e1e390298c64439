"""SQLite's per-batch statements, compiled once and run on the driver's own connection.

SQLAlchemy Core builds each statement here and compiles it, once, for the connection's
dialect. Executing a compiled statement through SQLAlchemy still costs, at every
execution, the statement's cache key (a walk of the whole statement), an execution
context and a result object: about 130 µs per statement on the test machine, against
75 µs for the rest of a small statement's trip through the SQLite driver. Where the
database is a library in the same process (SQLite), that is a large share of a claim
or a commit of a batch, so the repository runs its per-batch statements (claims and
commits) as their compiled text on the driver's connection instead, with each
parameter converted by its SQLAlchemy type's own bind processor. What they return must
need no conversion (names, specs, and times read as integer microseconds), and a
driver error is raised as the SQLAlchemy error SQLAlchemy itself would raise, so the
rest of the repository handles both paths alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from pyncette.sql.sqlite_driver import FusedConnection


class Precompiled:
    """``statement`` compiled for ``dialect`` with positional parameters, and the bind
    processor of each of them."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            raise ValueError(f"{dialect.name} does not bind parameters by position")
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("a statement with parameters rendered at execution time")
        self.sql = compiled.string
        self._slots: list[tuple[str | None, Callable[[Any], Any] | None, Any]] = []
        """Per position: the bind name and its converter, or (``None``, ``None``, the
        converted value) for a value the statement holds itself (a JSON path, say)."""
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            convert = bind.type.bind_processor(dialect)
            if not bind.required and bind.callable is None:
                fixed = bind.value if convert is None else convert(bind.value)
                self._slots.append((None, None, fixed))
            else:
                self._slots.append((name, convert, None))

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for ``params`` (by bind name), each converted."""
        return tuple(
            fixed if name is None else params[name] if convert is None else convert(params[name])
            for name, convert, fixed in self._slots
        )


class DriverStatements:
    """Runs statements on a connection's driver connection (a :class:`FusedConnection`),
    compiling each the first time it is run."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[ClauseElement, Precompiled] = {}
        """By statement (hashed by identity; the repository keeps its statements)."""

    def precompiled(self, statement: ClauseElement) -> Precompiled:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = Precompiled(statement, self._dialect)
        return compiled

    async def rows(
        self, conn: AsyncConnection, statement: ClauseElement, params: Mapping[str, Any]
    ) -> Sequence[Any]:
        """The rows ``statement`` returns for ``params``, as tuples."""
        compiled = self.precompiled(statement)
        sync = conn.sync_connection
        if sync is not None and not (sync.closed or sync.invalidated):
            raw = sync.connection  # checked out and valid: read without a greenlet hop
        else:
            raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if not isinstance(driver, FusedConnection):
            raise TypeError(f"{type(driver).__name__} is not this project's SQLite driver")
        parameters = compiled.parameters(params)
        try:
            return await driver.fetch(compiled.sql, parameters)
        except sqlite3.Error as error:
            raise exc.DBAPIError.instance(
                compiled.sql, parameters, error, sqlite3.Error, dialect=self._dialect
            ) from error
