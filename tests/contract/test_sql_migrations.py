"""Alembic migrations, start-up, options and connection robustness of the SQL backends."""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backend_sql import (
    fresh_mysql_database,
    fresh_postgres_database,
    mysql_options,
    mysql_url,
    postgres_url,
    unique_name,
)
from pyncette.errors import BackendUnavailableError
from pyncette.model import Lease
from pyncette.mysql import mysql_repository
from pyncette.postgres import postgres_repository
from pyncette.repository import Commit, History, Repository
from pyncette.sql import repository as sql_repository
from pyncette.sql import statements
from pyncette.sql.engine import normalize_url
from pyncette.sql.names import MAX_TABLE_NAME
from pyncette.sql.schema import make_history_table
from pyncette.sqlite import sqlite_repository
from pyncette.timeutil import to_epoch_us
from support import LEASE, ROOT, T0, A, S, alembic_cli, reg, schema_diff

pytestmark = pytest.mark.anyio


@dataclass
class Target:
    """One empty database of one dialect."""

    name: str
    url: str
    """As a user would pass it to ``alembic -x url=...``."""
    factory: Callable[..., AbstractAsyncContextManager[Repository]]
    base_options: dict[str, Any]
    prefix: str

    def options(self, table: str, **extra: Any) -> dict[str, Any]:
        return {**self.base_options, f"{self.prefix}table_name": table, **extra}

    def engine(self) -> AsyncEngine:
        return create_async_engine(normalize_url(self.url))


def _sqlite(tmp_path: Path) -> Iterator[Target]:
    path = tmp_path / "tasks.db"
    yield Target(
        "sqlite", f"sqlite:///{path}", sqlite_repository, {"sqlite_database": str(path)}, "sqlite_"
    )


def _postgres(tmp_path: Path) -> Iterator[Target]:
    with fresh_postgres_database() as name:
        url = postgres_url(name)
        yield Target("postgres", url, postgres_repository, {"postgres_url": url}, "postgres_")


def _mysql(tmp_path: Path) -> Iterator[Target]:
    with fresh_mysql_database() as name:
        url = mysql_url(name)
        yield Target("mysql", url, mysql_repository, mysql_options(name), "mysql_")


DIALECTS = {"sqlite": _sqlite, "postgres": _postgres, "mysql": _mysql}
SERVERS = ["postgres", "mysql"]


def _param(name: str) -> Any:
    marks = [] if name == "sqlite" else [pytest.mark.service(name)]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_param(name) for name in DIALECTS])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from DIALECTS[request.param](tmp_path)


@pytest.fixture(params=[_param(name) for name in SERVERS])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from DIALECTS[request.param](tmp_path)


HEAD = "0002"


def _tables(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_table_names())


def _own_tables(table: str) -> list[str]:
    return sorted([table, f"{table}_alembic_version", f"{table}_history"])


def _schema_diff(conn: Connection, table: str) -> list[Any]:
    """The task table and its history table against their definitions."""
    diff = schema_diff(conn, table)
    metadata = MetaData()
    make_history_table(metadata, table)
    history = f"{table}_history"
    context = MigrationContext.configure(
        conn,
        opts={"include_name": lambda name, kind, _parents: kind != "table" or name == history},
    )
    return [*diff, *compare_metadata(context, metadata)]


async def _inspect(target: Target, fn: Callable[[Connection], Any]) -> Any:
    engine = target.engine()
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def _execute(target: Target, statement: str) -> list[Any]:
    engine = target.engine()
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_command_line_upgrade_matches_the_table_definition(target: Target) -> None:
    table = unique_name()
    # the application's own Alembic history must not be touched
    await _execute(target, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    await _execute(target, "INSERT INTO alembic_version VALUES ('app_revision')")
    done = alembic_cli("-x", f"url={target.url}", "-x", f"table={table}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await _inspect(target, lambda c: _schema_diff(c, table)) == []
    assert await _execute(target, f"SELECT version_num FROM {table}_alembic_version") == [(HEAD,)]
    assert await _execute(target, "SELECT version_num FROM alembic_version") == [("app_revision",)]
    # a table provisioned by hand is used as is
    skip = {} if target.name == "sqlite" else {f"{target.prefix}skip_table_create": True}
    async with target.factory(**target.options(table, **skip)) as repo:
        assert await repo.get("g", "missing") is None


async def test_start_up_upgrade_matches_the_table_definition(target: Target) -> None:
    table = unique_name()
    async with target.factory(**target.options(table)) as repo:
        assert await repo.list("g", limit=1) is not None
    assert await _inspect(target, lambda c: _schema_diff(c, table)) == []
    assert await _inspect(target, _tables) == _own_tables(table)
    # starting again finds the table at head and changes nothing
    async with target.factory(**target.options(table)):
        pass
    assert await _execute(target, f"SELECT version_num FROM {table}_alembic_version") == [(HEAD,)]


async def test_creating_the_table_logs_no_driver_warnings(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    """MySQL ignores a name given to a primary key and says so in a note, which asyncmy
    logs as a warning: the version table's key must be created without one."""
    with caplog.at_level(logging.INFO):
        async with target.factory(**target.options(unique_name())):
            pass
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


async def test_skip_table_create_without_a_table_names_the_table_and_command(
    server: Target,
) -> None:
    table = unique_name()
    option = f"{server.prefix}skip_table_create"
    with pytest.raises(ValueError, match=table) as raised:
        async with server.factory(**server.options(table, **{option: True})):
            pass
    message = str(raised.value)
    assert f"-x table={table} upgrade head" in message and "alembic -x url=" in message
    assert option in message
    assert await _inspect(server, _tables) == []


async def test_ten_instances_starting_at_once_create_the_table_once(target: Target) -> None:
    table = unique_name()

    async def start() -> None:
        async with target.factory(**target.options(table)) as repo:
            await repo.get("g", "x")

    await asyncio.gather(*(start() for _ in range(10)))
    assert await _inspect(target, _tables) == _own_tables(table)
    assert await _execute(target, f"SELECT version_num FROM {table}_alembic_version") == [(HEAD,)]


BAD_NAMES = ["", "1tasks", "tasks-x", "tasks x", 'x"; DROP TABLE y; --', "ünï", "t" * 48, 42]
FACTORIES = {
    "sqlite": (sqlite_repository, {"sqlite_database": "unused.db"}),
    "postgres": (postgres_repository, {"postgres_url": "postgresql://nowhere.invalid/x"}),
    "mysql": (mysql_repository, {"mysql_host": "nowhere.invalid", "mysql_database": "x"}),
}


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("backend_name", list(FACTORIES))
async def test_bad_table_names_are_rejected_before_connecting(backend_name: str, bad: Any) -> None:
    factory, options = FACTORIES[backend_name]
    option = f"{backend_name}_table_name"
    with pytest.raises(ValueError, match=option):
        async with factory(**options, **{option: bad}):
            pass


async def test_memory_sqlite_still_validates_its_table_name() -> None:
    with pytest.raises(ValueError, match="sqlite_table_name"):
        async with sqlite_repository(sqlite_table_name="bad name"):
            pass
    async with sqlite_repository() as repo:
        assert type(repo).__name__ == "InMemoryRepository"


async def test_sqlite_start_up_waits_for_a_writer_holding_the_file(tmp_path: Path) -> None:
    """Switching a rollback-journal file to WAL fails at once, ignoring the busy
    timeout, while another connection writes; start-up must wait for it instead."""
    path = tmp_path / "busy.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")

    async def commit_later() -> None:
        await asyncio.sleep(0.3)
        writer.execute("COMMIT")

    try:
        release = asyncio.ensure_future(commit_later())
        async with sqlite_repository(sqlite_database=str(path)) as repo:
            assert release.done()
            await repo.register("g", [reg("a", T0)], now=T0, force=False)
            assert (await repo.get("g", "a")) is not None
        await release
        assert writer.execute("SELECT x FROM other").fetchall() == [(1,)]
    finally:
        writer.close()
    with closing(sqlite3.connect(path)) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("backend_name", list(FACTORIES))
async def test_unknown_options_of_the_backend_are_rejected(backend_name: str) -> None:
    factory, options = FACTORIES[backend_name]
    with pytest.raises(ValueError, match=f"{backend_name}_tabel_name"):
        async with factory(**options, **{f"{backend_name}_tabel_name": "x"}):
            pass


SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (postgres_repository, {"postgres_url": f"postgres://u:{SECRET}@127.0.0.1:9/db"}),
        (
            mysql_repository,
            {
                "mysql_host": "127.0.0.1",
                "mysql_port": 9,
                "mysql_database": "db",
                "mysql_user": "u",
                "mysql_password": SECRET,
            },
        ),
    ],
    ids=["postgres", "mysql"],
)
async def test_passwords_never_reach_errors_or_logs(
    factory: Callable[..., AbstractAsyncContextManager[Repository]],
    options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendUnavailableError) as raised:
        async with factory(**options):
            pass
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert all(SECRET not in str(e) and SECRET not in repr(e) for e in chain)
    assert "***" in str(raised.value)
    assert SECRET not in caplog.text


def test_bad_urls_are_rejected_without_echoing_the_password() -> None:
    with pytest.raises(ValueError, match="postgres_url") as raised:
        normalize_url(f"oracle://u:{SECRET}@host/db", "postgres_url")
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["postgres://u@h/db", "postgresql://u@h/db", "postgresql+asyncpg://u@h/db"]
)
def test_postgres_url_spellings_are_accepted(url: str) -> None:
    assert normalize_url(url).drivername == "postgresql+asyncpg"


@pytest.mark.service("postgres")
async def test_postgres_scheme_connects(tmp_path: Path) -> None:
    for target in _postgres(tmp_path):
        url = target.url.replace("postgresql://", "postgres://")
        async with postgres_repository(postgres_url=url, postgres_table_name="tasks") as repo:
            assert await repo.get("g", "a") is None


def test_mysql_repository_is_importable_from_the_postgres_module() -> None:
    from pyncette.postgres import mysql_repository as from_postgres

    assert from_postgres is mysql_repository


KILL_OTHERS = {
    "postgres": (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ),
    "mysql": (
        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() "
        "AND id <> CONNECTION_ID()"
    ),
}


async def test_connections_dropped_by_the_server_are_survived(
    server: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyncette.sql")

    async with server.factory(
        **server.options(unique_name(), **{f"{server.prefix}pool_size": 3})
    ) as repo:
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        # several pooled connections, then the server drops every one of them
        await asyncio.gather(*(repo.get("g", "a") for _ in range(3)))
        rows = await _execute(server, KILL_OTHERS[server.name])
        if server.name == "mysql":
            for (pid,) in rows:
                await _execute(server, f"KILL {int(pid)}")
        assert rows
        for _ in range(4):
            record = await repo.get("g", "a")
            assert record is not None and record.name == "a"
        assert await repo.register("g", [reg("b", T0)], now=T0, force=False) == []
    assert "connection was dropped" in caplog.text


async def test_concurrent_command_line_upgrades_in_separate_processes(target: Target) -> None:
    table = unique_name()
    executable = shutil.which("alembic", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "alembic"]
    args = ["-x", f"url={target.url}", "-x", f"table={table}", "upgrade", "head"]
    processes = [
        await asyncio.create_subprocess_exec(
            *command,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = [await process.communicate() for process in processes]
    assert [p.returncode for p in processes] == [0] * 3, [err.decode() for _, err in results]
    assert await _inspect(target, _tables) == _own_tables(table)
    assert await _execute(target, f"SELECT version_num FROM {table}_alembic_version") == [(HEAD,)]


# -- batched writes under contention (one upsert per register chunk, optimistic commits)


async def test_concurrent_registers_of_new_rows_keep_the_soonest_run(target: Target) -> None:
    names = [f"task-{i:03d}" for i in range(250)]  # more than one chunk
    async with target.factory(**target.options(unique_name(), **_pool(target, 6))) as repo:
        # six writers race to create the same rows, each with its own run and spec
        skipped = await asyncio.gather(
            *(
                repo.register(
                    "g",
                    [reg(n, T0 + k * S, spec=f"v{k}") for n in reversed(names)],
                    now=T0,
                    force=False,
                )
                for k in (3, 1, 5, 0, 4, 2)
            )
        )
        assert skipped == [[]] * 6
        page = await repo.list("g", limit=1000)
        assert [r.name for r in page.records] == names
        assert {r.scheduled_at for r in page.records} == {T0}
        assert all(r.locked_by is None and r.spec is not None for r in page.records)


async def test_register_racing_claims_never_overrides_a_live_lease(target: Target) -> None:
    names = [f"task-{i:03d}" for i in range(120)]
    async with target.factory(**target.options(unique_name(), **_pool(target, 4))) as repo:
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        lease = Lease("claimer")
        claimed, skipped = await asyncio.gather(
            repo.claim("g", now=T0 + 10 * S, limit=60, lease=lease),
            repo.register(
                "g", [reg(n, T0 - S, spec="new") for n in names], now=T0 + 10 * S, force=False
            ),
        )
        assert len(claimed.records) == 60
        for name in names:
            record = await repo.get("g", name)
            assert record is not None
            if name in skipped:
                # left untouched: still the claim's, old run and spec
                assert record.locked_by == lease and record.scheduled_at == T0
                assert record.spec is None
            else:
                # registered (then perhaps claimed): the sooner run and the new spec
                assert record.scheduled_at == T0 - S and record.spec == "new"
        assert set(skipped) <= {r.name for r in claimed.records}
        # forcing takes every row back, clears the leases and sets the run as given
        assert await repo.register("g", [reg(n, T0) for n in names], now=T0, force=True) == []
        page = await repo.list("g", limit=1000)
        assert all(r.locked_by is None for r in page.records)
        assert {r.name: r.scheduled_at for r in page.records} == dict.fromkeys(names, T0)
        assert await repo.commit("g", [Commit(n, lease, None) for n in skipped], now=T0) == skipped


async def test_commits_report_exactly_the_rows_no_longer_held(target: Target) -> None:
    async with target.factory(**target.options(unique_name())) as repo:
        names = [f"task-{i:03d}" for i in range(10)]
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        first = await repo.claim("g", now=T0, limit=10, lease=Lease("first"))
        assert len(first.records) == 10
        # half expire and are taken by another lease; one is deleted
        second = await repo.claim("g", now=T0 + 2 * LEASE, limit=4, lease=Lease("second"))
        assert await repo.unregister("g", names[9])
        stale = {r.name for r in second.records} | {names[9]}
        commits = [
            Commit(n, Lease("first"), None if i % 2 else T0 + LEASE) for i, n in enumerate(names)
        ]
        lost = await repo.commit("g", commits, now=T0 + 2 * LEASE)
        assert sorted(lost) == sorted(stale)
        for i, name in enumerate(names):
            record = await repo.get("g", name)
            if name in stale:
                assert record is None or record.locked_by == Lease("second")
            elif i % 2:
                assert record is None
            else:
                assert record is not None and record.locked_by is None
                assert record.scheduled_at == T0 + LEASE


async def test_a_short_claim_reports_the_next_due_time(target: Target) -> None:
    async with target.factory(**target.options(unique_name())) as repo:
        await repo.register(
            "g", [reg("a", T0), reg("b", T0 + S), reg("c", T0 + 5 * S)], now=T0, force=False
        )
        result = await repo.claim("g", now=T0 + S, limit=10, lease=A)
        assert [r.name for r in result.records] == ["a", "b"]
        assert result.next_due_at == T0 + 5 * S
        result = await repo.claim("g", now=T0 + 5 * S, limit=10, lease=A)
        assert [r.name for r in result.records] == ["c"]
        assert result.next_due_at == T0 + S + LEASE  # the lease of "a" expires first
        empty = await repo.claim("empty", now=T0, limit=10, lease=A)
        assert empty.records == [] and empty.next_due_at is None


def _pool(target: Target, size: int) -> dict[str, Any]:
    return {} if target.name == "sqlite" else {f"{target.prefix}pool_size": size}


# -- revision 0002: the outcome column and the history table


def _columns(table: str) -> Callable[[Connection], list[str]]:
    return lambda conn: sorted(c["name"] for c in inspect(conn).get_columns(table))


def _text(value: str | bytes) -> str:
    """A name as read with raw SQL (MySQL's are ``VARBINARY``)."""
    return value.decode() if isinstance(value, bytes) else value


async def _count(target: Target, table: str) -> int:
    ((count,),) = await _execute(target, f"SELECT COUNT(*) FROM {table}")
    return int(count)


KEEP = History(keep=3, retention=datetime.timedelta(days=1))


async def test_upgrading_from_0001_keeps_the_rows_and_downgrading_reverses_it(
    target: Target,
) -> None:
    table = unique_name()
    args = ["-x", f"url={target.url}", "-x", f"table={table}"]
    done = alembic_cli(*args, "upgrade", "0001")
    assert done.returncode == 0, done.stderr
    before = await _inspect(target, _columns(table))
    assert "outcome" not in before
    await _execute(
        target,
        f"INSERT INTO {table} (task_group, name, spec, scheduled_at, due_at, "
        "lease_duration_us, locked_by) VALUES ('g', 'kept', '{\"x\": 1}', 5, 5, 10, NULL)",
    )
    # start-up upgrades the table; the row is as it was, with no outcome yet
    async with target.factory(**target.options(table)) as repo:
        record = await repo.get("g", "kept")
        assert record is not None and record.outcome is None
        assert (record.spec, record.locked_by) == ('{"x": 1}', None)
        claimed = await repo.claim("g", now=T0, limit=1, lease=A)
        assert [r.name for r in claimed.records] == ["kept"]
        assert await repo.commit("g", [Commit("kept", A, T0 + S, '{"ok":1}', KEEP)], now=T0) == []
        assert await repo.history("g", "kept", limit=5) == ['{"ok":1}']
    assert await _inspect(target, lambda c: _schema_diff(c, table)) == []
    assert await _inspect(target, _tables) == _own_tables(table)
    assert await _execute(target, f"SELECT version_num FROM {table}_alembic_version") == [(HEAD,)]

    done = alembic_cli(*args, "downgrade", "0001")
    assert done.returncode == 0, done.stderr
    assert await _inspect(target, _columns(table)) == before
    assert await _inspect(target, _tables) == sorted([table, f"{table}_alembic_version"])
    rows = await _execute(target, f"SELECT name, scheduled_at, locked_by FROM {table}")
    assert [(_text(name), at, lease) for name, at, lease in rows] == [
        ("kept", to_epoch_us(T0 + S), None)
    ]
    # and up again
    done = alembic_cli(*args, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await _inspect(target, lambda c: _schema_diff(c, table)) == []
    assert await _count(target, f"{table}_history") == 0


async def test_skip_table_create_on_a_table_at_0001_asks_for_the_upgrade(server: Target) -> None:
    table = unique_name()
    done = alembic_cli("-x", f"url={server.url}", "-x", f"table={table}", "upgrade", "0001")
    assert done.returncode == 0, done.stderr
    option = f"{server.prefix}skip_table_create"
    with pytest.raises(ValueError, match="older revision") as raised:
        async with server.factory(**server.options(table, **{option: True})):
            pass
    message = str(raised.value)
    assert "\n" not in message and "no outcome column" in message and option in message
    assert "alembic -x url='" in message and f"-x table={table} upgrade head" in message
    assert "alembic.ini" in message
    # nothing was changed
    assert await _execute(server, f"SELECT version_num FROM {table}_alembic_version") == [("0001",)]
    # once upgraded, the table is used as it is
    done = alembic_cli("-x", f"url={server.url}", "-x", f"table={table}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    async with server.factory(**server.options(table, **{option: True})) as repo:
        assert await repo.history("g", "a", limit=1) == []


async def test_history_stays_bounded_by_keep_and_retention(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small sweeps, to see them come back while they find a full batch
    monkeypatch.setattr(statements, "SWEEP_LIMIT", 5)
    monkeypatch.setattr(sql_repository, "SWEEP_LIMIT", 5)
    table = unique_name()
    history = f"{table}_history"
    short = History(keep=3, retention=10 * S)
    async with target.factory(**target.options(table)) as repo:
        names = [f"task-{i}" for i in range(4)]
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        now = T0
        for run in range(8):
            now = T0 + run * S
            claimed = await repo.claim("g", now=now, limit=10, lease=A)
            assert len(claimed.records) == len(names)
            commits = [Commit(n, A, now + S, f'{{"run":{run}}}', KEEP) for n in names]
            assert await repo.commit("g", commits, now=now) == []
            # trimmed in the same transaction: never more than ``keep`` per row
            assert await _count(target, history) <= len(names) * KEEP.keep
        assert await repo.history("g", "task-0", limit=10) == [
            '{"run":7}',
            '{"run":6}',
            '{"run":5}',
        ]
        # a held row's unlock trims too
        await repo.claim("g", now=now + S, limit=1, lease=A)
        rows = (await repo.list("g", limit=10)).records
        held = next(r.name for r in rows if r.locked_by == A)
        assert await repo.unlock("g", held, A, outcome='{"u":1}', history=KEEP, now=now + S)
        assert (await repo.history("g", held, limit=10))[0] == '{"u":1}'
        assert await _count(target, history) == len(names) * KEEP.keep

        # twelve one-off rows, deleted by their commits: their history outlives them
        once = [f"once-{i:02d}" for i in range(12)]
        later = now + 2 * S
        await repo.register("one-offs", [reg(n, later) for n in once], now=later, force=False)
        await repo.claim("one-offs", now=later, limit=20, lease=A)
        commits = [Commit(n, A, None, '{"done":true}', short) for n in once]
        assert await repo.commit("one-offs", commits, now=later) == []
        assert await repo.history("one-offs", "once-00", limit=5) == ['{"done":true}']
        assert await _count(target, history) == len(names) * KEEP.keep + len(once)

        # past their retention (and the sweep interval), each history write sweeps up to
        # SWEEP_LIMIT of them, again at the next write while it finds a full batch
        swept = later + sql_repository.SWEEP_INTERVAL + 20 * S
        await repo.register("ticks", [reg("tick", swept)], now=swept, force=False)
        for step in range(3):
            at = swept + step * S
            await repo.claim("ticks", now=at, limit=1, lease=A)
            tick = Commit("tick", A, at + S, "{}", KEEP)
            assert await repo.commit("ticks", [tick], now=at) == []
        assert await repo.history("one-offs", "once-00", limit=5) == []
        assert await _count(target, history) == len(names) * KEEP.keep + 3


async def test_longest_table_name_fits_every_derived_name(target: Target) -> None:
    table = "t" * MAX_TABLE_NAME
    async with target.factory(**target.options(table)) as repo:
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=1, lease=A)
        assert await repo.commit("g", [Commit("a", A, T0 + S, "{}", KEEP)], now=T0) == []
        assert await repo.history("g", "a", limit=1) == ["{}"]
    assert await _inspect(target, _tables) == _own_tables(table)
    assert await _inspect(target, lambda c: _schema_diff(c, table)) == []


async def test_writes_without_outcomes_run_the_same_statements_as_before(
    target: Target,
) -> None:
    """A commit or unlock without an outcome must not pay for the feature: no statement
    mentions the outcome column or the history table."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    async with target.factory(**target.options(unique_name())) as repo:
        names = [f"task-{i}" for i in range(3)]
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        await repo.claim("g", now=T0, limit=3, lease=A)
        event.listen(Engine, "before_cursor_execute", record)
        try:
            commits = [Commit("task-0", A, T0 + S), Commit("task-1", A, None)]
            assert await repo.commit("g", commits, now=T0) == []
            assert await repo.unlock("g", "task-2", A)
        finally:
            event.remove(Engine, "before_cursor_execute", record)
    assert seen
    assert not [s for s in seen if "outcome" in s or "_history" in s]
