"""The ``pyncette`` command: in process with click's ``CliRunner``, and as real
subprocesses (``python -m pyncette ...``) against real backends.

The apps it is pointed at live in ``tests/cli_apps``; ``backend_app`` picks its backend
from the environment, as deployed apps do, so each test gives it a store of its own.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from click.testing import CliRunner, Result

from backend_dynamodb import REGION, delete_table, isolate_aws_env, moto_client, unique_table
from backend_redis import delete_namespace, free_port, unique_namespace
from backend_sql import postgres_url, unique_name
from pyncette import Pyncette, PyncetteContext, outcome
from pyncette.cli import cli
from pyncette.cli.loading import load_app
from pyncette.model import Lease
from pyncette.repository import Commit
from pyncette.task import Task
from support import ROOT

APPS = ROOT / "tests" / "cli_apps"
BACKEND_APP = str(APPS / "backend_app.py")
"""The file form of APP (``path/to/file.py``, attribute ``app`` by default): loaded
afresh by each command, so it sees the environment the test set."""
BACKEND_MODULE = "tests.cli_apps.backend_app:app"
RUNNER_MODULE = "tests.cli_apps.runner_app:app"
UTC = datetime.UTC
PROCESS_TIMEOUT = 60.0
"""Real seconds a subprocess may take before the test fails instead of hanging."""


# -- running the command ----------------------------------------------------------------


def invoke(*args: str) -> Result:
    """Run the command in this process, as the console script would."""
    return CliRunner().invoke(cli, list(args), prog_name="pyncette")


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYNCETTE_", "LOG_LEVEL"))}
    return {**base, **env}


def pyncette_process(
    *args: str, env: Mapping[str, str], timeout: float = PROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyncette`` as a separate process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "pyncette", *args],
        cwd=ROOT,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    """The failure message: exactly one ``Error:`` line and no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PROCESS_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the app's stores -------------------------------------------------------------------


def set_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "PYNCETTE_CLI_BACKEND": "sqlite",
        "PYNCETTE_CLI_SQLITE": str(tmp_path / "tasks.db"),
        "PYNCETTE_CLI_TABLE": "cli_tasks",
    }
    set_env(monkeypatch, env)
    return env


@pytest.fixture
def postgres_env(postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "PYNCETTE_CLI_BACKEND": "postgres",
        "PYNCETTE_CLI_POSTGRES_URL": postgres_url(postgres_database),
        "PYNCETTE_CLI_TABLE": unique_name(),
    }
    set_env(monkeypatch, env)
    return env


@pytest.fixture
def redis_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = {
        "PYNCETTE_CLI_BACKEND": "redis",
        "PYNCETTE_CLI_REDIS_URL": redis_url,
        "PYNCETTE_CLI_TABLE": unique_namespace(),
    }
    set_env(monkeypatch, env)
    yield env
    asyncio.run(delete_namespace(redis_url, env["PYNCETTE_CLI_TABLE"]))


def with_app(action: Callable[[PyncetteContext, Pyncette], Any]) -> Any:
    """Open the environment's ``backend_app`` as a program would and run ``action``."""
    app = load_app(BACKEND_APP)

    async def run() -> Any:
        async with app.create() as ctx:
            return await action(ctx, app)

    return asyncio.run(run())


def task(app: Pyncette, name: str) -> Task:
    return app.tasks[name]


SOON = datetime.timedelta(minutes=5)
LATER = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)


def add_instances() -> None:
    """``reminder``: ``alice`` every five minutes, ``bob`` once in 2031; ``shard``: two."""

    async def add(ctx: PyncetteContext, app: Pyncette) -> None:
        reminder = task(app, "reminder")
        await ctx.schedule_task(reminder, "alice", interval=SOON, who="alice")
        await ctx.schedule_task(reminder, "bob", execute_at=LATER, who="bob")
        await ctx.schedule_task(task(app, "shard"), "s1", interval=SOON)
        await ctx.schedule_task(task(app, "shard"), "s2", interval=SOON)

    with_app(add)


def lock_instance(name: str) -> datetime.datetime:
    """Store a due one-off ``reminder`` instance and claim it, as a running execution
    would hold it; returns when the lease expires."""

    async def claim(ctx: PyncetteContext, app: Pyncette) -> datetime.datetime:
        now = ctx.clock.now()
        await ctx.schedule_task(task(app, "reminder"), name, execute_at=now - SOON)
        result = await ctx.repository.claim(
            "reminder", now=now, limit=10, lease=Lease("held-by-test")
        )
        (record,) = [r for r in result.records if r.name == name]
        assert record.locked_until is not None
        return record.locked_until

    result: datetime.datetime = with_app(claim)
    return result


def stored(name: str, instance: str | None = None) -> Any:
    async def get(ctx: PyncetteContext, app: Pyncette) -> Any:
        return await ctx.get_task(task(app, name), instance)

    return with_app(get)


def listed(name: str) -> Any:
    async def page(ctx: PyncetteContext, app: Pyncette) -> Any:
        return list(await ctx.list_tasks(task(app, name), limit=100))

    return with_app(page)


def rows_by_key(output: str) -> dict[tuple[str, str | None], dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(output)
    return {(row["task"], row["instance"]): row for row in rows}


# -- every command has help --------------------------------------------------------------


def all_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


def test_every_command_has_help() -> None:
    commands = list(all_commands(cli))
    assert {
        ("run",),
        ("tasks", "list"),
        ("tasks", "show"),
        ("tasks", "trigger"),
        ("tasks", "pause"),
        ("tasks", "resume"),
        ("tasks", "unschedule"),
        ("db", "upgrade"),
        ("db", "downgrade"),
        ("db", "current"),
        ("db", "history"),
        ("db", "sql"),
        ("import-1x",),
        ("healthcheck",),
    } <= set(commands)
    for command in [(), *commands]:
        result = invoke(*command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert result.stdout.startswith(f"Usage: pyncette {' '.join(command)}".rstrip())


def test_python_m_pyncette_and_usage_errors_exit_2() -> None:
    version = pyncette_process("--version", env={})
    assert version.returncode == 0 and version.stdout.startswith("pyncette, version ")
    unknown = pyncette_process("no-such-command", env={})
    assert unknown.returncode == 2 and "No such command" in unknown.stderr
    missing = pyncette_process("tasks", "list", env={})
    assert missing.returncode == 2 and "Missing argument 'APP'" in missing.stderr


def test_the_console_script_is_declared_and_packaged(tmp_path: Path) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["scripts"] == {"pyncette": "pyncette.cli:main"}
    assert any(dep.startswith("click") for dep in project["dependencies"])
    assert any(dep.startswith("rich") for dep in project["dependencies"])

    from hatchling.builders.wheel import WheelBuilder

    builder = WheelBuilder(str(ROOT))
    (wheel,) = list(builder.build(directory=str(tmp_path), versions=["standard"]))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "pyncette = pyncette.cli:main" in archive.read(entry_points).decode()
        assert "pyncette/__main__.py" in names
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


# -- finding the app --------------------------------------------------------------------


def test_app_given_as_module_with_the_default_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the module is found from the working directory
    monkeypatch.delenv("PYNCETTE_CLI_BACKEND", raising=False)
    result = invoke("tasks", "list", "tests.cli_apps.backend_app", "--json")
    assert result.exit_code == 0, result.output
    assert set(rows_by_key(result.stdout)) == {("hourly", None), ("nightly", None)}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.cli_apps.no_such_module:app", "no module named 'tests.cli_apps.no_such_module'"),
        ("no/such/file.py:app", "no such file 'no/such/file.py'"),
        ("tests.cli_apps.broken_app:missing", "has no attribute 'missing'"),
        ("tests.cli_apps.broken_app:not_an_app", "'not_an_app' is a int, not a Pyncette app"),
    ],
)
def test_an_app_that_is_not_there_is_a_usage_error(
    spec: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    result = invoke("tasks", "list", spec)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_failing_app_module_is_one_line_unless_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    sys.modules.pop("tests.cli_apps.raising_app", None)
    result = invoke("tasks", "list", "tests.cli_apps.raising_app:app")
    assert result.exit_code == 1
    assert one_error_line(result.stderr) == (
        "Error: RuntimeError: configuration server unreachable"
    )

    debug = pyncette_process("--debug", "tasks", "list", "tests.cli_apps.raising_app:app", env={})
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "RuntimeError: configuration server unreachable" in debug.stderr


def test_app_option_errors_from_create_are_one_line() -> None:
    result = pyncette_process("tasks", "list", "tests.cli_apps.broken_app:app", env={})
    assert result.returncode == 1
    assert "batch_size" in one_error_line(result.stderr)


# -- tasks ------------------------------------------------------------------------------


def test_tasks_list_shows_static_tasks_and_instances(sqlite_env: dict[str, str]) -> None:
    add_instances()
    result = invoke("tasks", "list", BACKEND_APP, "--json")
    assert result.exit_code == 0, result.output
    rows = rows_by_key(result.stdout)
    assert set(rows) == {
        ("hourly", None),
        ("nightly", None),
        ("reminder", "alice"),
        ("reminder", "bob"),
        ("shard", "s1"),
        ("shard", "s2"),
    }
    assert rows["reminder", "bob"] == {
        "task": "reminder",
        "instance": "bob",
        "kind": "dynamic",
        "scheduled_at": LATER.isoformat(),
        "locked_until": None,
        "locked_by": None,
    }
    assert rows["hourly", None]["kind"] == "static"
    assert rows["shard", "s1"]["kind"] == "partitioned"
    # nightly: 03:00 in Paris, which is 01:00 or 02:00 UTC
    nightly = datetime.datetime.fromisoformat(rows["nightly", None]["scheduled_at"])
    assert nightly.utcoffset() == datetime.timedelta(0) and nightly.hour in (1, 2)


def test_tasks_list_one_task_with_a_limit(sqlite_env: dict[str, str]) -> None:
    add_instances()
    one = invoke("tasks", "list", BACKEND_APP, "reminder", "--json")
    assert set(rows_by_key(one.stdout)) == {("reminder", "alice"), ("reminder", "bob")}
    static = invoke("tasks", "list", BACKEND_APP, "hourly", "--json")
    assert set(rows_by_key(static.stdout)) == {("hourly", None)}
    limited = invoke("tasks", "list", BACKEND_APP, "shard", "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)) == 1
    unknown = invoke("tasks", "list", BACKEND_APP, "nope")
    assert unknown.exit_code == 1
    assert one_error_line(unknown.stderr) == (
        "Error: No task 'nope' in the app (its tasks: hourly, nightly, reminder, shard)"
    )


def test_tasks_list_as_a_table_shows_leases(sqlite_env: dict[str, str]) -> None:
    add_instances()
    locked_until = lock_instance("carol")
    result = invoke("tasks", "list", BACKEND_APP)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[1]
    for column in ("Task", "Instance", "Kind", "Next run", "Locked by", "Lock expires"):
        assert column in header
    (carol,) = [line for line in result.stdout.splitlines() if "carol" in line]
    assert "held-by-test" in carol
    assert locked_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") in carol
    assert "2031-01-02 03:04:05 UTC" in result.stdout  # bob's next run

    async def add_odd_name(ctx: PyncetteContext, app: Pyncette) -> None:
        await ctx.schedule_task(task(app, "reminder"), "[bold]zed[/bold]", interval=SOON)

    with_app(add_odd_name)
    odd = invoke("tasks", "list", BACKEND_APP, "reminder")
    assert "[bold]zed[/bold]" in odd.stdout  # names are printed as they are, not as markup

    rows = rows_by_key(invoke("tasks", "list", BACKEND_APP, "reminder", "--json").stdout)
    assert rows["reminder", "carol"]["locked_by"] == "held-by-test"
    assert rows["reminder", "carol"]["locked_until"] == locked_until.astimezone(UTC).isoformat()


def test_tasks_show(sqlite_env: dict[str, str]) -> None:
    add_instances()
    alice = invoke("tasks", "show", BACKEND_APP, "reminder", "alice", "--json")
    assert alice.exit_code == 0, alice.output
    shown = json.loads(alice.stdout)
    assert shown["task"] == "reminder" and shown["instance"] == "alice"
    assert shown["interval"] == SOON.total_seconds()
    assert shown["lease_duration"] == 30.0  # the template's
    assert shown["args"] == {"who": "alice"}
    assert shown["stored"] is True and shown["locked_by"] is None

    nightly = json.loads(invoke("tasks", "show", BACKEND_APP, "nightly", "--json").stdout)
    assert nightly["schedule"] == "0 3 * * *" and nightly["timezone"] == "Europe/Paris"
    assert nightly["args"] == {"region": "eu"} and nightly["enabled"] is True

    template = json.loads(invoke("tasks", "show", BACKEND_APP, "shard", "--json").stdout)
    assert template["partition_count"] == 4 and "stored" not in template
    s1 = json.loads(invoke("tasks", "show", BACKEND_APP, "shard", "s1", "--json").stdout)
    assert s1["partition"] in range(4)

    table = invoke("tasks", "show", BACKEND_APP, "reminder", "alice")
    assert table.exit_code == 0
    assert any(line.split()[:2] == ["interval", "0:05:00"] for line in table.stdout.splitlines())

    missing = invoke("tasks", "show", BACKEND_APP, "reminder", "nobody")
    assert missing.exit_code == 1
    assert one_error_line(missing.stderr) == "Error: No instance 'nobody' of 'reminder' is stored"
    static_instance = invoke("tasks", "show", BACKEND_APP, "hourly", "x")
    assert static_instance.exit_code == 2
    assert "'hourly' is a static task: it has no instances" in static_instance.stderr


def test_tasks_show_prints_the_last_run(sqlite_env: dict[str, str]) -> None:
    lock_instance("due")
    started = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    ended = outcome.encode(
        outcome.RunStatus.FAILED,
        scheduled_at=started,
        started_at=started,
        duration=datetime.timedelta(seconds=1.5),
        attempt=2,
        instance="web-1:7",
        error="ValueError: no",
    )

    async def commit(ctx: PyncetteContext, app: Pyncette) -> None:
        done = Commit("due", Lease("held-by-test"), LATER, ended)
        assert await ctx.repository.commit("reminder", [done], now=ctx.clock.now()) == []

    with_app(commit)
    shown = json.loads(invoke("tasks", "show", BACKEND_APP, "reminder", "due", "--json").stdout)
    assert shown["last_status"] == "failed" and shown["last_error"] == "ValueError: no"
    assert shown["last_run_at"] == started.isoformat()
    assert shown["last_duration"] == 1.5 and shown["last_attempt"] == 2
    table = invoke("tasks", "show", BACKEND_APP, "reminder", "due").stdout.splitlines()
    assert any(line.split()[:2] == ["last_duration", "0:00:01.500000"] for line in table)
    never = json.loads(invoke("tasks", "show", BACKEND_APP, "hourly", "--json").stdout)
    assert never["last_status"] is None and never["last_run_at"] is None


def test_tasks_unschedule(sqlite_env: dict[str, str]) -> None:
    add_instances()
    result = invoke("tasks", "unschedule", BACKEND_APP, "shard", "s2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Instance 's2' of 'shard': unscheduled\n"
    assert stored("shard", "s2") is None
    assert stored("shard", "s1") is not None

    again = invoke("tasks", "unschedule", BACKEND_APP, "shard", "s2")
    assert again.exit_code == 1
    assert one_error_line(again.stderr) == "Error: Instance 's2' of 'shard' is not stored"
    static = invoke("tasks", "unschedule", BACKEND_APP, "hourly", "x")
    assert static.exit_code == 2
    no_instance = invoke("tasks", "unschedule", BACKEND_APP, "reminder")
    assert no_instance.exit_code == 2


def near_now(moment: datetime.datetime, before: datetime.datetime) -> bool:
    return before - datetime.timedelta(seconds=1) <= moment <= datetime.datetime.now(UTC)


def test_tasks_trigger_moves_the_next_run_to_now(sqlite_env: dict[str, str]) -> None:
    add_instances()
    before = datetime.datetime.now(UTC)
    for args in (["hourly"], ["reminder", "alice"], ["reminder", "bob"], ["shard", "s1"]):
        result = invoke("tasks", "trigger", BACKEND_APP, *args, "--reschedule")
        assert result.exit_code == 0, result.output
        label = f"Instance {args[1]!r} of {args[0]!r}" if len(args) == 2 else f"Task {args[0]!r}"
        assert result.stdout.startswith(f"{label}: next run set to ")
        assert near_now(stored(*args).scheduled_at, before), args
    # the instances keep what they were scheduled with
    alice = stored("reminder", "alice").task
    assert alice.interval == SOON and alice.extra_args == {"who": "alice"}
    assert stored("reminder", "bob").task.execute_at == LATER
    assert not near_now(stored("nightly").scheduled_at, before)  # untouched


def test_tasks_trigger_refuses_a_running_instance(sqlite_env: dict[str, str]) -> None:
    locked_until = lock_instance("carol")
    result = invoke("tasks", "trigger", BACKEND_APP, "reminder", "carol", "--reschedule")
    assert result.exit_code == 1
    until = locked_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert one_error_line(result.stderr) == (
        f"Error: Instance 'carol' of 'reminder' is running now (lease until {until}); "
        "trigger it again once it has finished"
    )
    assert stored("reminder", "carol").locked_by == "held-by-test"


def test_tasks_trigger_queues_an_extra_run_and_keeps_the_schedule(
    sqlite_env: dict[str, str],
) -> None:
    add_instances()
    lock_instance("carol")  # running: an extra run is queued all the same
    before = {args: stored(*args).scheduled_at for args in (("hourly",), ("reminder", "carol"))}
    for args in before:
        result = invoke("tasks", "trigger", BACKEND_APP, *args)
        assert result.exit_code == 0, result.output
        label = f"Instance {args[1]!r} of {args[0]!r}" if len(args) == 2 else f"Task {args[0]!r}"
        assert result.stdout.startswith(f"{label}: a run queued for ")
        assert stored(*args).scheduled_at == before[args]  # the schedule is unchanged
    names = [state.task.name for state in listed("reminder")]
    assert not any(name.startswith("__run__:") for name in names)  # not an instance


def test_tasks_trigger_needs_a_stored_task(sqlite_env: dict[str, str]) -> None:
    missing = invoke("tasks", "trigger", BACKEND_APP, "reminder", "nobody")
    assert missing.exit_code == 1
    assert one_error_line(missing.stderr) == "Error: Instance 'nobody' of 'reminder' is not stored"
    no_instance = invoke("tasks", "trigger", BACKEND_APP, "reminder")
    assert no_instance.exit_code == 2
    assert "'reminder' is a dynamic task: give the INSTANCE name" in no_instance.stderr


def test_tasks_pause_and_resume(sqlite_env: dict[str, str]) -> None:
    add_instances()
    before = datetime.datetime.now(UTC)
    for args in (["hourly"], ["reminder", "alice"]):
        label = f"Instance {args[1]!r} of {args[0]!r}" if len(args) == 2 else f"Task {args[0]!r}"
        not_paused = invoke("tasks", "resume", BACKEND_APP, *args)
        assert not_paused.exit_code == 1
        assert one_error_line(not_paused.stderr) == f"Error: {label} is not paused"
        paused = invoke("tasks", "pause", BACKEND_APP, *args)
        assert paused.exit_code == 0, paused.output
        assert paused.stdout == f"{label}: paused\n"
        assert stored(*args).paused
        resumed = invoke("tasks", "resume", BACKEND_APP, *args)
        assert resumed.exit_code == 0, resumed.output
        assert resumed.stdout.startswith(f"{label}: resumed, next run at ")
        state = stored(*args)
        assert not state.paused and state.scheduled_at > before
    assert stored("reminder", "alice").task.extra_args == {"who": "alice"}  # spec kept
    missing = invoke("tasks", "pause", BACKEND_APP, "reminder", "nobody")
    assert missing.exit_code == 1
    assert one_error_line(missing.stderr) == "Error: Instance 'nobody' of 'reminder' is not stored"


@pytest.mark.service("postgres")
def test_tasks_on_postgres_as_a_subprocess(postgres_env: dict[str, str]) -> None:
    add_instances()
    listed = pyncette_process("tasks", "list", BACKEND_MODULE, "--json", env=postgres_env)
    assert listed.returncode == 0, listed.stderr
    rows = rows_by_key(listed.stdout)
    assert ("reminder", "alice") in rows and ("shard", "s2") in rows
    assert rows["reminder", "bob"]["scheduled_at"] == LATER.isoformat()

    gone = pyncette_process(
        "tasks", "unschedule", BACKEND_MODULE, "reminder", "alice", env=postgres_env
    )
    assert gone.returncode == 0, gone.stderr
    assert stored("reminder", "alice") is None
    shown = pyncette_process("tasks", "show", BACKEND_MODULE, "reminder", "alice", env=postgres_env)
    assert shown.returncode == 1
    assert one_error_line(shown.stderr) == "Error: No instance 'alice' of 'reminder' is stored"


@pytest.mark.service("redis")
def test_tasks_list_on_redis(redis_env: dict[str, str]) -> None:
    add_instances()
    in_process = invoke("tasks", "list", BACKEND_APP, "--json")
    assert in_process.exit_code == 0, in_process.output
    assert len(rows_by_key(in_process.stdout)) == 6

    listed = pyncette_process("tasks", "list", BACKEND_MODULE, "shard", "--json", env=redis_env)
    assert listed.returncode == 0, listed.stderr
    assert set(rows_by_key(listed.stdout)) == {("shard", "s1"), ("shard", "s2")}


# -- db ---------------------------------------------------------------------------------


def sqlite_tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_db_commands_on_a_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    target = ["--url", f"sqlite:///{path}", "--table", "jobs"]
    upgraded = invoke("db", "upgrade", *target)
    assert upgraded.exit_code == 0, upgraded.output
    assert "Running upgrade  -> 0001" in upgraded.stderr
    assert "Running upgrade 0001 -> 0002" in upgraded.stderr
    assert {"jobs", "jobs_alembic_version", "jobs_history"} <= sqlite_tables(path)

    current = invoke("db", "current", *target)
    assert current.exit_code == 0 and current.stdout.strip() == "0002 (head)"
    history = invoke("db", "history", *target)
    assert history.exit_code == 0 and "0002 (head) (current)" in history.stdout
    assert "0001 -> 0002 (head)," in invoke("db", "history").stdout  # no database needed

    downgraded = invoke("db", "downgrade", *target, "--revision", "base")
    assert downgraded.exit_code == 0, downgraded.output
    assert "jobs" not in sqlite_tables(path)
    assert invoke("db", "current", *target).stdout == ""


def test_db_commands_take_the_database_from_the_app(sqlite_env: dict[str, str]) -> None:
    path = Path(sqlite_env["PYNCETTE_CLI_SQLITE"])
    result = invoke("db", "upgrade", BACKEND_APP)
    assert result.exit_code == 0, result.output
    assert {"cli_tasks", "cli_tasks_alembic_version"} <= sqlite_tables(path)
    assert invoke("db", "current", BACKEND_APP).stdout.strip() == "0002 (head)"
    # the app starts on the table the command made
    assert stored("hourly") is not None


def test_db_sql_prints_the_ddl_without_a_database() -> None:
    result = invoke("db", "sql", "--url", "postgresql://", "--table", "jobs")
    assert result.exit_code == 0, result.output
    assert 'CREATE TABLE "jobs" (' in result.stdout
    assert "CREATE TABLE jobs_alembic_version" in result.stdout
    assert "CREATE INDEX ix_jobs_due_at ON jobs (task_group, due_at);" in result.stdout
    assert "INSERT INTO jobs_alembic_version (version_num) VALUES ('0001')" in result.stdout
    assert "Generating static SQL" in result.stderr  # progress stays off stdout

    mysql = invoke("db", "sql", "--url", "mysql://", "--table", "jobs")
    assert "CREATE TABLE `jobs` (" in mysql.stdout and "COLLATE utf8mb4_bin" in mysql.stdout
    nothing = invoke("db", "sql", "--url", "postgresql://", "--table", "jobs", "--from", "0002")
    assert nothing.exit_code == 0 and "CREATE TABLE" not in nothing.stdout


def test_db_usage_errors_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYNCETTE_DB_URL", raising=False)
    neither = invoke("db", "upgrade")
    assert neither.exit_code == 2 and "Give APP, or the database as --url" in neither.stderr
    both = invoke("db", "upgrade", BACKEND_APP, "--url", "sqlite://")
    assert both.exit_code == 2 and "not both" in both.stderr

    monkeypatch.setenv("PYNCETTE_CLI_BACKEND", "memory")
    memory = invoke("db", "upgrade", BACKEND_APP)
    assert memory.exit_code == 1
    assert "keeps its tasks in memory" in one_error_line(memory.stderr)

    monkeypatch.setenv("PYNCETTE_CLI_BACKEND", "redis")
    monkeypatch.setenv("PYNCETTE_CLI_REDIS_URL", "redis://127.0.0.1:1")
    redis = invoke("db", "current", BACKEND_APP)
    assert redis.exit_code == 1
    assert one_error_line(redis.stderr).startswith(
        "Error: The app's backend (pyncette.redis.redis_repository) is not a SQL backend"
    )

    bad_url = invoke("db", "upgrade", "--url", "oracle://x")
    assert bad_url.exit_code == 1
    assert "--url must be a postgresql://, mysql:// or sqlite:// URL" in one_error_line(
        bad_url.stderr
    )
    bad_table = invoke("db", "upgrade", "--url", "sqlite://", "--table", "1x")
    assert "--table must be a plain identifier" in one_error_line(bad_table.stderr)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    bad_revision = invoke("db", "upgrade", "--url", url, "--revision", "nope")
    assert bad_revision.exit_code == 1
    assert (
        one_error_line(bad_revision.stderr) == "Error: Can't locate revision identified by 'nope'"
    )


@pytest.mark.service("postgres")
def test_db_commands_on_postgres_as_subprocesses(postgres_env: dict[str, str]) -> None:
    table = postgres_env["PYNCETTE_CLI_TABLE"]
    upgraded = pyncette_process("db", "upgrade", BACKEND_MODULE, env=postgres_env)
    assert upgraded.returncode == 0, upgraded.stderr
    current = pyncette_process("db", "current", BACKEND_MODULE, env=postgres_env)
    assert current.stdout.strip() == "0002 (head)"

    by_url = {"PYNCETTE_DB_URL": postgres_env["PYNCETTE_CLI_POSTGRES_URL"]}
    same = pyncette_process("db", "current", "--table", table, env=by_url)
    assert same.returncode == 0 and same.stdout.strip() == "0002 (head)"
    other = pyncette_process("db", "current", "--table", unique_name(), env=by_url)
    assert other.returncode == 0 and other.stdout.strip() == ""

    down = pyncette_process("db", "downgrade", "--table", table, "-r", "base", env=by_url)
    assert down.returncode == 0, down.stderr
    assert "Running downgrade 0002 -> 0001" in down.stderr
    assert "Running downgrade 0001 -> " in down.stderr
    assert pyncette_process("db", "current", BACKEND_MODULE, env=postgres_env).stdout == ""

    refused = pyncette_process(
        "db", "upgrade", "--url", "postgresql://postgres@127.0.0.1:1/none", env={}
    )
    assert refused.returncode == 1
    assert "Connect call failed" in one_error_line(refused.stderr)
    server = postgres_env["PYNCETTE_CLI_POSTGRES_URL"].rpartition("/")[0]
    no_database = pyncette_process("db", "upgrade", "--url", f"{server}/{unique_name()}", env={})
    assert no_database.returncode == 1
    line = one_error_line(no_database.stderr)
    assert "does not exist" in line and "Background on this error" not in line


def test_plain_alembic_without_a_url_says_what_to_give() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "FAILED: No database given: pass it as `-x url=...`" in result.stdout


# -- import-1x --------------------------------------------------------------------------


def spec_1x(name: str, **fields: Any) -> str:
    """A ``task_spec`` as Pyncette 1.x writes it."""
    base = {"name": name, "schedule": None, "interval": None, "execute_at": None}
    return json.dumps({**base, "timezone": None, "extra_args": {}, **fields})


def write_1x_sqlite(path: Path) -> None:
    """A Pyncette 1.x SQLite table (1.x's layout) with two ``reminder`` instances, a
    row of a task the app does not define, and one whose spec is not JSON."""

    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE pyncette_tasks (name PRIMARY KEY, parent_name, locked_until "
            "timestamp, locked_by, execute_after timestamp, task_spec)"
        )
        rows = [
            ("reminder:dan", "reminder", spec_1x("dan", interval=60.0), LATER.timestamp()),
            ("reminder:eve", "reminder", spec_1x("eve", extra_args={"x": 1}, interval=5.0), None),
            ("gone:x", "gone", spec_1x("x", interval=60.0), LATER.timestamp()),
            ("reminder:bad", "reminder", "{not json", LATER.timestamp()),
        ]
        conn.executemany(
            "INSERT INTO pyncette_tasks (name, parent_name, task_spec, execute_after) "
            "VALUES (?, ?, ?, ?)",
            rows,
        )


def test_import_1x_from_sqlite(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.db"
    write_1x_sqlite(legacy)
    source = ["--sql-url", f"sqlite:///{legacy}", "--sql-table", "pyncette_tasks"]
    result = invoke("import-1x", BACKEND_APP, *source, "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["imported"] == 2
    assert set(outcome["skipped"]) == {"gone:x", "reminder:bad"}
    assert stored("reminder", "dan").scheduled_at == LATER
    assert stored("reminder", "eve").task.extra_args == {"x": 1}

    text = invoke("import-1x", BACKEND_APP, *source)
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0] == "2 imported, 2 skipped"
    assert "  skipped gone:x: no dynamic task 'gone' in this app" in text.stdout


@pytest.mark.service("redis")
def test_import_1x_from_redis(sqlite_env: dict[str, str], redis_url: str) -> None:
    """1.x's layout: a sorted set per dynamic task naming the instances' hashes."""
    namespace = unique_namespace()
    prefix = f"pyncette:{namespace}:"
    key = f"{prefix}task:reminder:grace"
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(
            key,
            mapping={
                "version": 1,
                "execute_after": LATER.isoformat(),
                "task_spec": spec_1x("grace", interval=60.0),
            },
        )
        client.zadd(f"{prefix}index:reminder", {f"{LATER.timestamp()}_{key}": 0})
        source = ["--redis-url", redis_url, "--redis-namespace", namespace]
        result = invoke("import-1x", BACKEND_APP, *source, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"imported": 1, "skipped": {}}
        assert stored("reminder", "grace").scheduled_at == LATER
    finally:
        client.delete(key, f"{prefix}index:reminder")
        client.close()


@pytest.mark.service("dynamodb")
def test_import_1x_from_dynamodb(
    sqlite_env: dict[str, str], dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.x's layout: an item per instance in the partition ``<prefix>:<task>``."""
    isolate_aws_env(monkeypatch)
    table = unique_table()
    client = moto_client(dynamodb_server)
    try:
        client.create_table(
            TableName=table,
            KeySchema=[
                {"AttributeName": "partition_id", "KeyType": "HASH"},
                {"AttributeName": "task_id", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "partition_id", "AttributeType": "S"},
                {"AttributeName": "task_id", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        client.put_item(
            TableName=table,
            Item={
                "partition_id": {"S": "old:reminder"},
                "task_id": {"S": "reminder:heidi"},
                "task_spec": {"S": spec_1x("heidi", interval=60.0, extra_args={"y": 2})},
                "execute_after": {"S": LATER.isoformat()},
            },
        )
        source = ["--dynamodb-table", table, "--dynamodb-endpoint", dynamodb_server]
        source += ["--dynamodb-region", REGION, "--dynamodb-partition-prefix", "old"]
        result = invoke("import-1x", BACKEND_APP, *source)
        assert result.exit_code == 0, result.output
        assert result.stdout == "1 imported, 0 skipped\n"
        assert stored("reminder", "heidi").task.extra_args == {"y": 2}
    finally:
        client.close()
        delete_table(dynamodb_server, table)


def test_import_1x_needs_exactly_one_source(sqlite_env: dict[str, str]) -> None:
    none = invoke("import-1x", BACKEND_APP)
    assert none.exit_code == 2
    assert "Give exactly one source of 1.x data: --sql-url, --redis-url, --dynamodb-table" in (
        none.stderr
    )
    two = invoke("import-1x", BACKEND_APP, "--sql-url", "sqlite://", "--redis-url", "redis://")
    assert two.exit_code == 2
    stray = invoke("import-1x", BACKEND_APP, "--sql-url", "sqlite://", "--redis-namespace", "x")
    assert stray.exit_code == 2 and "--redis-namespace only go with --redis-url" in stray.stderr
    no_file = invoke("import-1x", BACKEND_APP, "--sql-url", "sqlite:////no/such/file.db")
    assert no_file.exit_code == 1
    assert one_error_line(no_file.stderr).startswith("Error: No SQLite file at sqlite")


# -- healthcheck ------------------------------------------------------------------------


class _Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        status = {"/ok": 200, "/accepted": 204, "/slow": 200}.get(self.path, 500)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def probe_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_exit_status() -> None:
    with probe_server() as base:
        ok = invoke("healthcheck", "--url", f"{base}/ok")
        assert ok.exit_code == 0 and ok.output == ""
        assert invoke("healthcheck", "--url", f"{base}/accepted").exit_code == 0
        failing = invoke("healthcheck", "--url", f"{base}/health")
        assert failing.exit_code == 1
        assert (
            one_error_line(failing.stderr) == f"Error: Unhealthy: {base}/health answered HTTP 500"
        )
        slow = invoke("healthcheck", "--url", f"{base}/slow", "--timeout", "0.2")
        assert slow.exit_code == 1 and "no answer" in one_error_line(slow.stderr)
    closed = invoke("healthcheck", "--url", f"http://127.0.0.1:{free_port()}/")
    assert closed.exit_code == 1 and "no answer" in one_error_line(closed.stderr)
    bad = invoke("healthcheck", "--url", "file:///etc/passwd")
    assert bad.exit_code == 2


# -- run --------------------------------------------------------------------------------


@pytest.fixture
def runner_env(tmp_path: Path) -> dict[str, str]:
    markers = tmp_path / "markers"
    markers.mkdir()
    return {
        "PYNCETTE_CLI_SQLITE": str(tmp_path / "run.db"),
        "PYNCETTE_CLI_MARKERS": str(markers),
    }


def markers(env: Mapping[str, str], prefix: str) -> list[str]:
    return sorted(p.name for p in Path(env["PYNCETTE_CLI_MARKERS"]).glob(f"{prefix}-*"))


@contextmanager
def started(*args: str, env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pyncette", *args],
        cwd=ROOT,
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:  # the test failed: stop it, its workers with it
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=PROCESS_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()  # its workers notice, and stop (see the test below)
        process.communicate(timeout=PROCESS_TIMEOUT)


def test_run_runs_the_app_until_a_signal(runner_env: dict[str, str]) -> None:
    port = free_port()
    env = {**runner_env, "PYNCETTE_CLI_HEALTH_PORT": str(port)}
    with started("run", RUNNER_MODULE, "--log-level", "debug", env=env) as process:
        wait_for(lambda: bool(markers(env, "ran")), "the task to run")
        url = f"http://127.0.0.1:{port}/health"
        wait_for(
            lambda: pyncette_process("healthcheck", "--url", url, env={}).returncode == 0,
            "the app to report healthy",
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    assert "DEBUG" in stderr  # --log-level reached app.main()'s logging
    assert markers(env, "stopped") == [f"stopped-{process.pid}"]
    stopped = pyncette_process("healthcheck", "--url", url, "--timeout", "1", env={})
    assert stopped.returncode == 1


def test_run_workers_share_the_backend_and_get_the_signal(runner_env: dict[str, str]) -> None:
    with started("run", RUNNER_MODULE, "--workers", "2", env=runner_env) as process:
        wait_for(lambda: len(markers(runner_env, "started")) == 2, "two workers")
        assert f"started-{process.pid}" not in markers(runner_env, "started")
        process.send_signal(signal.SIGINT)  # as a Ctrl-C in the terminal reaches it
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    assert "started 2 workers" in stderr
    pids = [name.split("-")[1] for name in markers(runner_env, "started")]
    assert markers(runner_env, "stopped") == sorted(f"stopped-{pid}" for pid in pids)


def test_run_workers_stop_when_one_fails(runner_env: dict[str, str]) -> None:
    env = {**runner_env, "PYNCETTE_CLI_FAIL_ONE": "1"}
    with started("run", RUNNER_MODULE, "--workers", "2", env=env) as process:
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 1
    assert "stopping the others" in stderr
    assert "Error: RuntimeError: this worker fails at start-up" in stderr
    assert len(markers(env, "started")) == 1  # the healthy one, stopped gracefully
    assert len(markers(env, "stopped")) == 1


def test_run_workers_stop_when_the_supervisor_is_killed(runner_env: dict[str, str]) -> None:
    with started("run", RUNNER_MODULE, "--workers", "2", env=runner_env) as process:
        wait_for(lambda: len(markers(runner_env, "started")) == 2, "two workers")
        process.kill()  # no signal to pass on
        process.communicate(timeout=PROCESS_TIMEOUT)
        wait_for(lambda: len(markers(runner_env, "stopped")) == 2, "the workers to stop")


def test_run_refuses_workers_without_a_shared_backend() -> None:
    result = pyncette_process("run", "tests.cli_apps.backend_app:app", "--workers", "2", env={})
    assert result.returncode == 2
    assert "--workers needs a backend the processes share" in result.stderr


def test_run_reports_an_app_that_cannot_start() -> None:
    result = pyncette_process("run", "tests.cli_apps.broken_app:app", env={})
    assert result.returncode == 1
    assert "batch_size" in one_error_line(result.stderr)
