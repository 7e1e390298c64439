"""SQLite's claims and commits run as their compiled text on the driver's connection
(``pyncette.sql.precompiled``): the same SQL and the same converted parameters
SQLAlchemy would send, past SQLAlchemy's per-execution work, with driver errors raised
as SQLAlchemy's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, exc, select, text

from pyncette.repository import Commit
from pyncette.sql.precompiled import DriverStatements, Precompiled
from pyncette.sql.repository import SqlRepository
from pyncette.sqlite import sqlite_repository
from support import T0, A, B, S, reg

pytestmark = pytest.mark.anyio


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SqlRepository]:
    async with sqlite_repository(sqlite_database=str(tmp_path / "p.db")) as repository:
        assert isinstance(repository, SqlRepository)
        yield repository


def sent_by_sqlalchemy(repo: SqlRepository) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement SQLAlchemy sends from now on, with its parameters."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, tuple(parameters)))

    event.listen(repo._engine.sync_engine, "before_cursor_execute", record)
    return sent


def hot_statements(repo: SqlRepository) -> list[tuple[str, Any, dict[str, Any]]]:
    sql = repo._sql
    owned = {"group": "g", "names": ["a", "b"], "pairs": [("a", A), ("b", A)]}
    return [
        (
            "claim",
            sql.claim_returning,
            {"group": "g", "now": T0, "limit": 10, "lease": A},
        ),
        ("done", sql.delete_owned, owned),
        (
            "moved",
            sql.commit_update(2, outcome=True),
            {**owned, "k0": "a", "v0": T0, "o0": "x", "k1": "b", "v1": T0, "o1": None},
        ),
    ]


async def test_the_same_sql_and_parameters_as_sqlalchemy_sends(repo: SqlRepository) -> None:
    sent = sent_by_sqlalchemy(repo)
    dialect = repo._engine.dialect
    for label, statement, params in hot_statements(repo):
        async with repo._engine.connect() as conn:
            await conn.execute(statement, params)
            await conn.rollback()
        expected_sql, expected_parameters = sent.pop()
        compiled = Precompiled(statement, dialect)
        assert compiled.sql == expected_sql, label
        assert compiled.parameters(params) == expected_parameters, label


async def test_claims_and_commits_send_nothing_through_sqlalchemy(repo: SqlRepository) -> None:
    await repo.register("g", [reg("a", T0), reg("b", T0 + S)], now=T0, force=False)
    sent = sent_by_sqlalchemy(repo)
    later = T0 + 5 * S
    claimed = await repo.claim("g", now=later, limit=1, lease=A)
    assert [record.name for record in claimed.records] == ["a"]
    more = await repo.claim("g", now=later, limit=1, lease=B)
    assert [record.name for record in more.records] == ["b"]
    commits = [Commit("a", A, None), Commit("b", B, later), Commit("b", A, None)]
    lost = await repo.commit("g", commits, now=later)
    assert lost == ["b"]  # the second commit of b is stale; the first was applied
    assert sent == []
    stored = await repo.get("g", "b")
    assert stored is not None and stored.scheduled_at == later and stored.locked_by is None
    assert await repo.get("g", "a") is None


async def test_a_driver_error_is_raised_as_sqlalchemys(repo: SqlRepository) -> None:
    statements = DriverStatements(repo._engine.dialect)
    missing = (
        select(text("x"))
        .select_from(text("no_such_table"))
        .where(text("y = :y").bindparams(bindparam("y")))
    )
    async with repo._engine.connect() as conn:
        with pytest.raises(exc.OperationalError, match="no_such_table") as raised:
            await statements.rows(conn, missing, {"y": 1})
    assert type(raised.value.orig).__name__ == "OperationalError"


def test_a_statement_expanded_at_execution_is_refused(repo_dialect: Any) -> None:
    listed = select(text("1")).where(
        text("a IN :names").bindparams(bindparam("names", expanding=True))
    )
    with pytest.raises(ValueError, match="rendered at execution time"):
        Precompiled(listed, repo_dialect)


@pytest.fixture
def repo_dialect() -> Any:
    from sqlalchemy.dialects import sqlite

    return sqlite.dialect(paramstyle="qmark")


async def test_a_commit_keeping_history_writes_inside_its_transaction(
    repo: SqlRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver statement of a commit that appends run history runs after the
    transaction's ``BEGIN IMMEDIATE``, with the history insert, not on its own."""
    import datetime

    from pyncette.repository import History
    from pyncette.sql.sqlite_driver import FusedConnection

    seen: list[tuple[str, bool]] = []
    fetch = FusedConnection.fetch

    async def recorded(self: FusedConnection, sql: str, *args: Any) -> list[Any]:
        seen.append((sql.split()[0], self._conn.in_transaction))
        return await fetch(self, sql, *args)

    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=5, lease=A)
    monkeypatch.setattr(FusedConnection, "fetch", recorded)
    kept = History(5, datetime.timedelta(days=1))
    assert await repo.commit("g", [Commit("a", A, None, "done", kept)], now=T0) == []
    begun = seen.index(("BEGIN", False))
    assert seen[begun + 1 : begun + 3] == [("DELETE", True), ("INSERT", True)]
    assert await repo.history("g", "a", limit=5) == ["done"]
