"""The SQLite driver (``pyncette.sql.sqlite_driver``): one thread hand-off per statement,
and the event loop never waits for the file."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from pyncette.model import Lease
from pyncette.repository import Commit, Repository
from pyncette.sql.repository import SqlRepository
from pyncette.sql.sqlite_driver import FusedConnection
from pyncette.sqlite import sqlite_repository
from support import T0, A, B, reg

pytestmark = pytest.mark.anyio


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    async with sqlite_repository(sqlite_database=str(tmp_path / "p.db")) as repository:
        yield repository


@pytest.fixture
def hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each hand-off to a connection's thread ran, in order."""
    seen: list[str] = []
    original = FusedConnection._execute

    async def counting(self: FusedConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", None) or getattr(fn, "func", fn).__name__)
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(FusedConnection, "_execute", counting)
    return seen


async def test_a_claim_and_a_commit_of_a_batch_hand_off_once_per_statement(
    repo: Repository, hand_offs: list[str]
) -> None:
    names = [f"i{i}" for i in range(100)]
    await repo.register("g", [reg(name, T0) for name in names], now=T0, force=False)
    hand_offs.clear()
    claimed = await repo.claim("g", now=T0, limit=100, lease=A)
    assert len(claimed.records) == 100
    # look without the lock, then one UPDATE … RETURNING, autocommitted; the batch was
    # full, so no look for the next due time
    assert hand_offs == ["_execute_and_fetch"] * 2
    hand_offs.clear()
    lost = await repo.commit("g", [Commit(name, A, None) for name in names], now=T0)
    assert lost == []
    assert hand_offs == ["_execute_and_fetch"]  # one DELETE … RETURNING, autocommitted


async def test_after_a_full_batch_a_claim_takes_the_lock_without_looking_first(
    repo: Repository, hand_offs: list[str]
) -> None:
    await repo.register("g", [reg(f"i{i}", T0) for i in range(150)], now=T0, force=False)
    assert len((await repo.claim("g", now=T0, limit=100, lease=A)).records) == 100
    hand_offs.clear()
    # no look, the last batch was full: UPDATE … RETURNING, then (it came back short) the
    # group's next due time
    short = await repo.claim("g", now=T0, limit=100, lease=A)
    assert len(short.records) == 50
    assert short.next_due_at == short.records[0].locked_until
    assert hand_offs == ["_execute_and_fetch"] * 2
    hand_offs.clear()
    # that one was short: the next claim looks first, finds nothing due, takes no lock
    empty = await repo.claim("g", now=T0, limit=100, lease=A)
    assert empty.records == []
    assert hand_offs == ["_execute_and_fetch"]


async def test_a_one_statement_claim_takes_the_earliest_due_rows_in_scheduled_order(
    repo: Repository,
) -> None:
    due = {f"i{i}": T0 - datetime.timedelta(seconds=i) for i in range(10)}
    later = {"late": T0 + datetime.timedelta(hours=1)}
    await repo.register(
        "g", [reg(n, at) for n, at in {**due, **later}.items()], now=T0, force=False
    )
    first = await repo.claim("g", now=T0, limit=4, lease=A)
    # the four due longest ago, earliest first
    assert [r.name for r in first.records] == ["i9", "i8", "i7", "i6"]
    assert [r.scheduled_at for r in first.records] == [due[r.name] for r in first.records]
    rest = await repo.claim("g", now=T0, limit=100, lease=A)
    assert [r.name for r in rest.records] == [f"i{i}" for i in range(5, -1, -1)]
    # short: the next due time is the sooner of the first lease expiry and "late"
    expiry = first.records[0].locked_until
    assert expiry is not None and rest.next_due_at == min(expiry, later["late"])


async def test_the_loop_runs_while_a_claim_waits_for_another_writer(
    repo: Repository, tmp_path: Path
) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    claim = asyncio.create_task(repo.claim("g", now=T0, limit=1, lease=A))
    started = time.monotonic()
    await asyncio.sleep(0.5)
    assert not claim.done()  # queued on SQLite's busy timeout, in the thread
    other.execute("COMMIT")
    other.close()
    result = await claim
    ticker.cancel()
    assert [r.name for r in result.records] == ["a"]
    # the loop kept turning while the statement waited: ~50 ticks of 10 ms in 0.5 s
    assert ticks >= 0.5 * (time.monotonic() - started) / 0.01 * 0.5


def pool_checkouts(repository: Repository) -> list[int]:
    """Appends 1 for every connection checked out of ``repository``'s pool."""
    assert isinstance(repository, SqlRepository)
    seen: list[int] = []
    event.listen(repository._engine.sync_engine, "checkout", lambda *_: seen.append(1))
    return seen


async def test_single_statements_share_one_held_connection(repo: Repository) -> None:
    names = [f"i{i}" for i in range(20)]
    await repo.register("g", [reg(name, T0) for name in names], now=T0, force=False)
    await repo.claim("other", now=T0, limit=1, lease=A)  # opens the held connection
    checkouts = pool_checkouts(repo)
    # concurrent calls take turns on it: none checks a connection out of the pool
    claims = await asyncio.gather(
        *(repo.claim("g", now=T0, limit=1, lease=Lease(f"l{i}")) for i in range(20))
    )
    taken = [(r.name, r.locked_by) for c in claims for r in c.records]
    assert sorted(name for name, _ in taken) == sorted(names)
    commits = [Commit(name, lease, None) for name, lease in taken if lease is not None]
    assert await repo.commit("g", commits, now=T0) == []
    assert checkouts == []


async def test_a_cancelled_statement_gives_up_the_held_connection(
    repo: Repository, tmp_path: Path
) -> None:
    await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
    other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    stuck = asyncio.ensure_future(repo.claim("g", now=T0, limit=1, lease=A))
    await asyncio.sleep(0.2)
    checkouts = pool_checkouts(repo)
    stuck.cancel()
    # SQLAlchemy closes a connection whose statement was cancelled, which waits for the
    # statement to end in its thread: let the other writer finish
    other.execute("COMMIT")
    other.close()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    # the next call opens a fresh connection and works; the cancelled statement may
    # still have run in its thread and taken one row, which its lease keeps until expiry
    later = await repo.claim("g", now=T0, limit=2, lease=B)
    assert checkouts == [1]
    assert {r.name for r in later.records} <= {"a", "b"} and later.records
    lost = await repo.commit("g", [Commit(r.name, B, None) for r in later.records], now=T0)
    assert lost == []


async def test_closing_the_repository_gives_back_the_held_connection(tmp_path: Path) -> None:
    async with sqlite_repository(sqlite_database=str(tmp_path / "c.db")) as repository:
        assert isinstance(repository, SqlRepository)
        await repository.claim("g", now=T0, limit=1, lease=A)
        pool = repository._engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedout() == 1
    assert pool.checkedout() == 0
