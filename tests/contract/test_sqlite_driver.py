"""The SQLite driver (``pyncette.sql.sqlite_driver``): single statements run in the event
loop's thread, the rest with one hand-off per statement, and the event loop never waits
for another writer or for a WAL checkpoint."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, exc
from sqlalchemy.pool import QueuePool

from pyncette.model import Lease
from pyncette.repository import Commit, Repository
from pyncette.sql import engine, sqlite_driver
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
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Where each statement ran, in order: ("here", its first word) for one run in the
    event loop's thread, ("thread", what was handed off) for each hand-off."""
    seen: list[tuple[str, str]] = []
    in_place = FusedConnection.in_place
    hand_off = FusedConnection._execute

    def here(self: FusedConnection, cursor: Any, sql: str, parameters: Any) -> list[Any]:
        seen.append(("here", sql.split()[0]))
        return in_place(self, cursor, sql, parameters)

    async def thread(self: FusedConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(("thread", getattr(fn, "__name__", None) or getattr(fn, "func", fn).__name__))
        return await hand_off(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(FusedConnection, "in_place", here)
    monkeypatch.setattr(FusedConnection, "_execute", thread)
    return seen


async def test_a_claim_and_a_commit_of_a_batch_run_in_place(
    repo: Repository, ran: list[tuple[str, str]]
) -> None:
    names = [f"i{i}" for i in range(100)]
    await repo.register("g", [reg(name, T0) for name in names], now=T0, force=False)
    ran.clear()
    claimed = await repo.claim("g", now=T0, limit=100, lease=A)
    assert len(claimed.records) == 100
    # look without the lock, then one UPDATE … RETURNING, autocommitted; the batch was
    # full, so no look for the next due time; no hand-off to the thread
    assert ran == [("here", "SELECT"), ("here", "UPDATE")]
    ran.clear()
    lost = await repo.commit("g", [Commit(name, A, None) for name in names], now=T0)
    assert lost == []
    assert ran == [("here", "DELETE")]  # one DELETE … RETURNING, autocommitted


async def test_statements_inside_a_transaction_run_in_the_thread(
    repo: Repository, ran: list[tuple[str, str]]
) -> None:
    # a registration is a transaction: BEGIN IMMEDIATE outside it (in place; a busy file
    # would send it to the thread), then its statements and COMMIT in the thread
    await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
    assert ran[0] == ("here", "BEGIN")
    assert len(ran) > 2 and all(where == "thread" for where, _ in ran[1:])
    assert ran[-1] == ("thread", "commit")
    assert [r.name for r in (await repo.claim("g", now=T0, limit=5, lease=A)).records] == [
        "a",
        "b",
    ]


async def test_after_a_full_batch_a_claim_takes_the_lock_without_looking_first(
    repo: Repository, ran: list[tuple[str, str]]
) -> None:
    await repo.register("g", [reg(f"i{i}", T0) for i in range(150)], now=T0, force=False)
    assert len((await repo.claim("g", now=T0, limit=100, lease=A)).records) == 100
    ran.clear()
    # no look, the last batch was full: UPDATE … RETURNING, then (it came back short) the
    # group's next due time
    short = await repo.claim("g", now=T0, limit=100, lease=A)
    assert len(short.records) == 50
    assert short.next_due_at == short.records[0].locked_until
    assert ran == [("here", "UPDATE"), ("here", "SELECT")]
    ran.clear()
    # that one was short: the next claim looks first, finds nothing due, takes no lock
    empty = await repo.claim("g", now=T0, limit=100, lease=A)
    assert empty.records == []
    assert ran == [("here", "SELECT")]


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
    repo: Repository, tmp_path: Path, ran: list[tuple[str, str]]
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
    # refused in place at once (no busy timeout there), then handed to the thread
    assert ran[-2:] == [("here", "UPDATE"), ("thread", "_execute_and_fetch")]
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


async def churn(repository: Repository, batches: int, size: int) -> None:
    """Claim and commit ``batches`` batches of 100 rows of ``size`` bytes each, every row
    moved on to a next run, as a drain of recurring work writes them."""
    names = [f"i{i:03d}" for i in range(100)]
    spec = "x" * size
    await repository.register("g", [reg(n, T0, spec) for n in names], now=T0, force=False)
    for batch in range(batches):
        now = T0 + datetime.timedelta(minutes=batch)
        lease = Lease(f"l{batch}")
        claimed = await repository.claim("g", now=now, limit=100, lease=lease)
        assert len(claimed.records) == 100
        later = now + datetime.timedelta(seconds=30)
        lost = await repository.commit("g", [Commit(n, lease, later) for n in names], now=now)
        assert lost == []


async def test_the_wal_stays_short_without_sqlites_own_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = sqlite_driver._checkpoint
    seen: dict[str, list[int]] = {}
    threads: list[threading.Thread] = []
    label = ""

    def recorded(connection: sqlite3.Connection) -> int:
        threads.append(threading.current_thread())
        pages = checkpoint(connection)
        seen.setdefault(label, []).append(pages)
        return pages

    monkeypatch.setattr(sqlite_driver, "_checkpoint", recorded)
    wal_mib: dict[str, float] = {}
    first = sqlite_driver.FIRST_CHECKPOINT_CHANGES
    runs = (("never", 10**9, 1500), ("large rows", first, 1500), ("small rows", first, 10))
    for label, interval, size in runs:
        monkeypatch.setattr(sqlite_driver, "FIRST_CHECKPOINT_CHANGES", interval)
        path = tmp_path / f"{len(wal_mib)}.db"
        async with sqlite_repository(sqlite_database=str(path)) as repository:
            await churn(repository, 80, size)
            wal_mib[label] = (tmp_path / f"{len(wal_mib)}.db-wal").stat().st_size / 2**20
    # SQLite checkpoints nothing by itself on these connections: without the driver's
    # checkpoints the log holds every page written
    assert "never" not in seen and wal_mib["never"] > 20, wal_mib
    # with them it stays about as short as SQLite's default (1,000 pages, 4 MiB)
    assert wal_mib["large rows"] < 8 and wal_mib["small rows"] < 8, wal_mib
    assert all(pages < 2 * sqlite_driver.CHECKPOINT_PAGES for pages in seen["large rows"])
    # small rows write fewer pages per row changed: the interval grows (doubling), so
    # there are fewer checkpoints, each still short of SQLite's 1,000 pages
    small = seen["small rows"]
    assert len(small) < len(seen["large rows"]) and small == sorted(small), seen
    assert small[-1] < sqlite_driver.CHECKPOINT_PAGES, seen
    # and they ran in the connections' threads, not in the event loop's
    assert threads and threading.main_thread() not in threads


def test_the_checkpoint_interval_follows_the_pages_written() -> None:
    aim = sqlite_driver.CHECKPOINT_PAGES
    assert sqlite_driver._next_interval(1000, 2 * aim) == 500  # too many pages: halve
    assert sqlite_driver._next_interval(1000, aim // 10) == 2000  # grows, doubling at most
    assert sqlite_driver._next_interval(1000, aim) == 1000
    top = sqlite_driver.MAX_CHECKPOINT_CHANGES
    assert sqlite_driver._next_interval(top, 1) == top
    assert sqlite_driver._next_interval(10, 10**6) == 1
    assert sqlite_driver._next_interval(700, -1) == 700  # not in WAL mode


async def test_a_statement_that_fails_in_place_for_another_reason_is_not_run_again(
    repo: Repository, ran: list[tuple[str, str]]
) -> None:
    assert isinstance(repo, SqlRepository)
    async with repo._engine.connect() as conn:
        conn = await conn.execution_options(**{engine._NO_BEGIN: True})
        await conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        ran.clear()
        with pytest.raises(exc.IntegrityError, match="UNIQUE"):
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert ran == [("here", "INSERT")]  # raised as it came, not retried in the thread
        assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 1
