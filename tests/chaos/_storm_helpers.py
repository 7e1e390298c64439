"""Helpers of the start-up storm, clock-skew, hostile-input and overload scenarios.

* :func:`repetitions` -- how many rounds a scenario runs: few in CI, many in the long
  form (``python -m benchmarks chaos --scenario storm|skew|hostile|overload`` sets
  ``PYNCETTE_CHAOS_LONG=1``).
* :class:`OffsetClock` -- a clock running a fixed offset ahead of (or behind) another.
* :func:`dump_store` -- every row a backend holds, read back *raw* (not through the
  repository under test) and decoded, with what is wrong with each; :func:`undecodable`
  then checks that the core can rebuild a task from every stored row.
* :class:`StormProcesses` -- N OS processes (:mod:`chaos._storm_child`) that start a
  pyncette app at the same instant on command.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backend_redis import die_with_parent
from pyncette.repository import Repository
from pyncette.task import STATIC_GROUP, Task
from pyncette.timeutil import from_epoch_us

T = TypeVar("T")

LONG_ENV = "PYNCETTE_CHAOS_LONG"
TESTS_DIR = Path(__file__).resolve().parent.parent


def long_form() -> bool:
    """Whether the long form runs (the benchmarks runner sets ``PYNCETTE_CHAOS_LONG=1``)."""
    return os.environ.get(LONG_ENV, "").strip().lower() in ("1", "true", "yes")


def repetitions(short: int, long: int) -> int:
    """``short`` rounds in the normal suite, ``long`` in the long form; an integer in
    ``PYNCETTE_CHAOS_ROUNDS`` overrides both."""
    override = os.environ.get("PYNCETTE_CHAOS_ROUNDS", "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    return long if long_form() else short


def publish(figures: Mapping[str, Any]) -> None:
    """Print a scenario's figures as one JSON line; with ``PYNCETTE_CHAOS_REPORT`` set
    (the long-form runner sets it) also append them to that file."""
    line = json.dumps(dict(figures), default=str)
    print(line)
    path = os.environ.get("PYNCETTE_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# -- clocks -----------------------------------------------------------------------------


class OffsetClock:
    """The time of ``base`` shifted by ``offset``: an instance whose system clock is off.

    Waiting is unaffected (a wrong clock still counts seconds correctly), so the
    scheduler's sleeps go to ``base`` and the test's virtual time drives both.
    """

    def __init__(self, base: Any, offset: datetime.timedelta) -> None:
        self.base = base
        self.offset = offset

    def now(self) -> datetime.datetime:
        moment: datetime.datetime = self.base.now()
        return moment + self.offset

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        result: T = await self.base.wait_for(awaitable, timeout)
        return result


# -- reading a store back ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredRow:
    group: str
    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    locked_until: datetime.datetime | None
    locked_by: str | None


@dataclass
class StoreDump:
    """Every row of one store, and every way in which one did not decode or did not
    agree with the backend's own indexes (``problems``; empty when all is well)."""

    rows: list[StoredRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    other_keys: list[str] = field(default_factory=list)
    """Keys or items that are not rows (markers, locks); Redis and DynamoDB only."""

    def names(self, group: str) -> set[str]:
        return {row.name for row in self.rows if row.group == group}

    def groups(self) -> set[str]:
        return {row.group for row in self.rows}


def _from_us(value: Any, what: str, problems: list[str]) -> datetime.datetime | None:
    try:
        return from_epoch_us(int(value))
    except (OverflowError, ValueError, TypeError) as exc:
        problems.append(f"{what}: {value!r} is not a time ({exc})")
        return None


def _check_spec(where: str, spec: str | None, problems: list[str]) -> None:
    if spec is None:
        return
    try:
        value = json.loads(spec)
    except ValueError as exc:
        problems.append(f"{where}: spec is not JSON ({exc})")
        return
    if not isinstance(value, dict):
        problems.append(f"{where}: spec is {type(value).__name__}, not an object")


def _text(value: Any, where: str, problems: list[str]) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{where}: not UTF-8 ({exc})")
            return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        problems.append(f"{where}: {value!r} is not text")
        return str(value)
    return value


async def dump_store(
    kind: str, options: Mapping[str, Any], repository: Repository | None = None
) -> StoreDump:
    """Read every row of the store ``options`` describe, bypassing the repository.

    ``kind`` is a backend name of the suite (``memory``, ``sqlite``, ``postgres``,
    ``mysql``, ``redis``, ``redis_cluster``, ``dynamodb``, ``dynamodb_local``); the
    memory backend keeps rows in the process, so it needs the app's ``repository``.
    """
    if kind == "memory":
        assert repository is not None, "the memory backend is read through its repository"
        return _dump_memory(repository)
    if kind in ("sqlite", "postgres", "mysql"):
        return await _dump_sql(kind, options)
    if kind in ("redis", "redis_cluster"):
        return await _dump_redis(options)
    if kind in ("dynamodb", "dynamodb_local"):
        import anyio.to_thread

        return await anyio.to_thread.run_sync(_dump_dynamodb, dict(options))
    raise ValueError(f"unknown backend {kind!r}")


def _dump_memory(repository: Repository) -> StoreDump:
    while hasattr(repository, "inner"):
        repository = repository.inner
    dump = StoreDump()
    groups: dict[str, Any] = getattr(repository, "_groups", {})
    for group, holder in groups.items():
        for name, row in holder.rows.items():
            where = f"{group}/{name!r}"
            if row.name != name:
                dump.problems.append(f"{where}: stored under another name {row.name!r}")
            if (row.locked_by is None) != (row.locked_until is None):
                dump.problems.append(
                    f"{where}: half a lease (locked_by={row.locked_by!r}, "
                    f"locked_until={row.locked_until!r})"
                )
            _check_spec(where, row.spec, dump.problems)
            dump.rows.append(
                StoredRow(group, name, row.spec, row.scheduled_at, row.locked_until, row.locked_by)
            )
    return dump


def sql_url(kind: str, options: Mapping[str, Any]) -> str:
    """The SQLAlchemy URL of a SQL backend's options (password included: tests only)."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{options['sqlite_database']}"
    if kind == "postgres":
        from pyncette.sql.engine import normalize_url

        return normalize_url(options["postgres_url"]).render_as_string(hide_password=False)
    user = urllib.parse.quote(str(options.get("mysql_user") or ""), safe="")
    password = options.get("mysql_password") or ""
    auth = f"{user}:{urllib.parse.quote(str(password), safe='')}" if password else user
    host, port = options.get("mysql_host", "localhost"), options.get("mysql_port", 3306)
    return f"mysql+asyncmy://{auth}@{host}:{port}/{options['mysql_database']}?charset=utf8mb4"


def sql_table(kind: str, options: Mapping[str, Any]) -> str:
    return str(options.get(f"{kind}_table_name", "pyncette"))


async def _dump_sql(kind: str, options: Mapping[str, Any]) -> StoreDump:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    table = sa.table(
        sql_table(kind, options),
        *(
            sa.column(name)
            for name in (
                "task_group",
                "name",
                "spec",
                "scheduled_at",
                "due_at",
                "lease_duration_us",
                "locked_by",
            )
        ),
    )
    engine = create_async_engine(sql_url(kind, options))
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(table))
            raw = [tuple(row) for row in result.all()]
    finally:
        await engine.dispose()
    dump = StoreDump()
    for group_raw, name_raw, spec, scheduled_raw, due_raw, lease_raw, holder_raw in raw:
        problems = dump.problems
        group = _text(group_raw, "task_group", problems)
        where = f"{group}/{name_raw!r}"
        name = _text(name_raw, where, problems)
        holder = None if holder_raw is None else _text(holder_raw, f"{where} locked_by", problems)
        scheduled = _from_us(scheduled_raw, f"{where} scheduled_at", problems)
        due = _from_us(due_raw, f"{where} due_at", problems)
        if _from_us(lease_raw, f"{where} lease_duration_us", problems) is None or (
            isinstance(lease_raw, int) and lease_raw <= 0
        ):
            problems.append(f"{where}: lease_duration_us {lease_raw!r} is not positive")
        if holder is None and due != scheduled:
            problems.append(f"{where}: unlocked but due_at {due} != scheduled_at {scheduled}")
        if not group or not name:
            problems.append(f"{where}: empty group or name")
        spec_text = None if spec is None else _text(spec, f"{where} spec", problems)
        _check_spec(where, spec_text, problems)
        if scheduled is not None:
            dump.rows.append(
                StoredRow(
                    group, name, spec_text, scheduled, due if holder is not None else None, holder
                )
            )
    return dump


REDIS_PREFIX = "pyncette"


def redis_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of ``namespace`` (layout in ``keys.py``)."""
    return f"{REDIS_PREFIX}:{{{namespace}:*"


def redis_marker(namespace: str) -> str:
    """The key recording that a namespace was checked for Pyncette 1.x data."""
    return f"{REDIS_PREFIX}:{{{namespace}:}}:pyncette1"


def _unescape_group(text: str) -> str:
    return text.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def decode_redis_row(value: bytes) -> tuple[int, int, int | None, str | None, str | None]:
    """A row as ``row.lua`` documents it: ``<scheduled_at>,<lease_duration>,
    <locked_until>,<holder length>,<holder>[o<outcome length>,<outcome>]<spec>`` (times in
    microseconds; lengths in bytes; the outcome is JSON text; the spec is ``n`` for none
    or ``s`` and its text). Raises ``ValueError`` on anything else."""
    scheduled, duration, until, size, rest = value.split(b",", 4)
    end = int(size)
    holder, tail = rest[:end], rest[end:]
    if len(holder) != end:
        raise ValueError(f"bad holder in {value[:80]!r}")
    if tail[:1] == b"o":
        length, _, after = tail[1:].partition(b",")
        outcome = after[: int(length)]
        if len(outcome) != int(length):
            raise ValueError(f"short outcome in {value[:80]!r}")
        json.loads(outcome)  # the core writes JSON: anything else is damage
        tail = after[int(length) :]
    if tail[:1] not in (b"n", b"s") or (tail[:1] == b"n" and tail != b"n"):
        raise ValueError(f"bad holder or spec in {value[:80]!r}")
    if bool(until) != bool(end):
        raise ValueError(f"half a lease in {value[:80]!r}")
    return (
        int(scheduled),
        int(duration),
        int(until) if until else None,
        holder.decode() if end else None,
        tail[1:].decode() if tail[:1] == b"s" else None,
    )


async def _dump_redis(options: Mapping[str, Any]) -> StoreDump:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    namespace = str(options.get("redis_namespace", ""))
    url = str(options.get("redis_url", "redis://localhost"))
    probe = Redis.from_url(url)
    try:
        cluster = bool((await probe.info("cluster")).get("cluster_enabled"))
    finally:
        await probe.aclose()
    # (redis-py's async types are looser than mypy's reading of them: Any)
    client: Any = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    dump = StoreDump()
    try:
        found = [key async for key in client.scan_iter(match=redis_pattern(namespace))]
        prefix = f"{REDIS_PREFIX}:{{{namespace}:"
        for key in sorted({bytes(key).decode() for key in found}):
            head, _, suffix = key.rpartition("}:")
            if not key.startswith(prefix) or suffix not in ("rows", "due", "names"):
                dump.other_keys.append(key)
                continue
            if suffix != "rows":
                continue
            group = _unescape_group(head[len(prefix) :])
            base = f"{head}}}:"
            fields = await client.hgetall(key)
            scores = await client.zrange(base + "due", 0, -1, withscores=True)
            due = {bytes(member).decode(): score for member, score in scores}
            listed = {bytes(m).decode() for m in await client.zrange(base + "names", 0, -1)}
            stored: set[str] = set()
            for name_raw, value in fields.items():
                where = f"{group}/{name_raw!r}"
                name = _text(name_raw, where, dump.problems)
                stored.add(name)
                try:
                    scheduled_us, _, until_us, holder, spec = decode_redis_row(bytes(value))
                except (ValueError, UnicodeDecodeError) as exc:
                    dump.problems.append(f"{where}: row {bytes(value)[:80]!r} is corrupt ({exc})")
                    continue
                scheduled = _from_us(scheduled_us, f"{where} scheduled_at", dump.problems)
                until = (
                    None
                    if until_us is None
                    else _from_us(until_us, f"{where} locked_until", dump.problems)
                )
                _check_spec(where, spec, dump.problems)
                score = due.get(name)
                claimable = until_us if until_us is not None else scheduled_us
                if score is None:
                    dump.problems.append(f"{where}: missing from the due index")
                elif abs(score - claimable) > 1e-9 * abs(claimable) + 1:
                    dump.problems.append(f"{where}: due score {score} != {claimable}")
                if name not in listed:
                    dump.problems.append(f"{where}: missing from the name index")
                if scheduled is not None:
                    dump.rows.append(StoredRow(group, name, spec, scheduled, until, holder))
            for name in (set(due) | listed) - stored:
                dump.problems.append(f"{group}/{name!r}: indexed but not stored")
    finally:
        await client.aclose()
    return dump


def dynamodb_timestamp(at: datetime.datetime) -> str:
    """The fixed-width UTC text DynamoDB items hold times in (``backends.rst``)."""
    return at.astimezone(datetime.UTC).replace(tzinfo=None).isoformat("T", "microseconds") + "Z"


def _dump_dynamodb(options: dict[str, Any]) -> StoreDump:
    import boto3
    import botocore.exceptions

    client = boto3.client(
        "dynamodb",
        endpoint_url=options["dynamodb_endpoint"],
        region_name=options.get("dynamodb_region_name", "us-east-1"),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    prefix = str(options.get("dynamodb_partition_prefix", "pyncette")) + ":"
    dump = StoreDump()
    try:
        pages = client.get_paginator("scan").paginate(
            TableName=options["dynamodb_table_name"], ConsistentRead=True
        )
        items = [item for page in pages for item in page.get("Items", [])]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return dump
        raise
    finally:
        client.close()
    for item in items:
        partition = item.get("partition_id", {}).get("S", "")
        name = item.get("task_id", {}).get("S")
        if not partition.startswith(prefix) or "scheduled_at" not in item:
            dump.other_keys.append(f"{partition}/{name}")
            continue
        group = partition[len(prefix) :]
        where = f"{group}/{name!r}"
        try:
            assert isinstance(name, str) and name
            scheduled = datetime.datetime.fromisoformat(item["scheduled_at"]["S"])
            until_text = item.get("locked_until", {}).get("S")
            until = None if until_text is None else datetime.datetime.fromisoformat(until_text)
            holder = item.get("locked_by", {}).get("S")
            spec = item.get("spec", {}).get("S")
            lease = float(item["lease_duration"]["N"])
            due_key = item["ready_at"]["S"]
        except (AssertionError, KeyError, ValueError, TypeError) as exc:
            dump.problems.append(f"{where}: item {str(item)[:200]} is corrupt ({exc!r})")
            continue
        if (holder is None) != (until is None):
            dump.problems.append(f"{where}: half a lease")
        if not lease > 0:
            dump.problems.append(f"{where}: lease_duration {lease} is not positive")
        if not due_key.startswith(dynamodb_timestamp(until or scheduled) + "#"):
            dump.problems.append(f"{where}: ready_at {due_key!r} is not its due time")
        _check_spec(where, spec, dump.problems)
        dump.rows.append(StoredRow(group, name, spec, scheduled, until, holder))
    return dump


def undecodable(dump: StoreDump, tasks: Mapping[str, Task]) -> list[str]:
    """What the core could not make of the stored rows: a static row of no known task,
    a row in no known group, an instance whose spec the core cannot rebuild a task from.
    ``tasks`` are the app's tasks by name (``app.tasks``)."""
    groups: dict[str, Task] = {}
    for task in tasks.values():
        if task.dynamic:
            groups.update(dict.fromkeys(task.all_groups(), task))
    problems = list(dump.problems)
    for row in dump.rows:
        where = f"{row.group}/{row.name!r}"
        if row.group == STATIC_GROUP:
            if row.spec is not None:
                problems.append(f"{where}: a static row with a spec")
            if row.name not in tasks or tasks[row.name].dynamic:
                problems.append(f"{where}: no static task of that name")
            continue
        template = groups.get(row.group)
        if template is None:
            problems.append(f"{where}: in no known group")
            continue
        try:
            instance = template.from_spec(row.name, row.spec or "{}")
        except Exception as exc:
            problems.append(f"{where}: the core cannot rebuild it ({exc!r})")
            continue
        if instance.name != row.name:
            problems.append(f"{where}: rebuilt as {instance.name!r}")
        if row.locked_by is not None and not isinstance(row.locked_by, str):
            problems.append(f"{where}: lease {row.locked_by!r} is not a token")
    return problems


# -- the start-up storm -----------------------------------------------------------------


class StormError(AssertionError):
    """A storm process failed, hung or broke the protocol."""


@dataclass
class StormResult:
    """One round: what each process reported, and how tightly the barrier released them."""

    reports: list[dict[str, Any]]
    release_spread_ms: float
    """Time between the first and the last process leaving the barrier."""
    wall_s: float

    @property
    def failures(self) -> list[str]:
        return [
            f"process {r.get('index')}: {r.get('error', '?')}" for r in self.reports if not r["ok"]
        ]

    @property
    def executed(self) -> list[str]:
        return sorted(name for r in self.reports for name in r.get("executed", []))


class StormProcesses:
    """``count`` child processes (``python -m chaos._storm_child``), each importing every
    backend once, then starting an app each time it is told to.

    A round: :meth:`run` sends every child its configuration (``arm``), waits until each
    has built its app, then releases all of them at once (``go``: one short write to
    each child's stdin) and collects one report per child. Children are killed when the
    object is closed, and die with the test process in any case.
    """

    def __init__(self, count: int = 10, env: Mapping[str, str] | None = None) -> None:
        self.count = count
        self._lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self._processes: list[subprocess.Popen[str]] = []
        self._stderr: list[list[str]] = [[] for _ in range(count)]
        self._pumps: list[threading.Thread] = []
        environment = {**os.environ, **(env or {})}
        path = [str(TESTS_DIR), *filter(None, [environment.get("PYTHONPATH")])]
        environment["PYTHONPATH"] = os.pathsep.join(path)
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            for index in range(count):
                process = subprocess.Popen(
                    [sys.executable, "-m", "chaos._storm_child", str(index)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                    env=environment,
                    cwd=str(TESTS_DIR),
                    preexec_fn=die_with_parent,
                )
                self._processes.append(process)
                for stream, sink in ((process.stdout, True), (process.stderr, False)):
                    pump = threading.Thread(
                        target=self._pump, args=(index, stream, sink), daemon=True
                    )
                    pump.start()
                    self._pumps.append(pump)
            self._expect_all("ready", timeout=120)
        except BaseException:
            self.close()
            raise

    def _pump(self, index: int, stream: Any, to_queue: bool) -> None:
        for line in stream:
            if to_queue:
                self._lines.put((index, line.rstrip("\n")))
            else:
                self._stderr[index].append(line)
                del self._stderr[index][:-200]
        if to_queue:
            self._lines.put((index, None))

    def _send(self, index: int, message: str) -> None:
        stdin = self._processes[index].stdin
        assert stdin is not None
        try:
            stdin.write(message + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise StormError(f"process {index} is gone: {self.stderr_of(index)}") from exc

    def stderr_of(self, index: int) -> str:
        return "".join(self._stderr[index])[-3000:]

    def _expect_all(self, word: str, timeout: float) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        got: dict[int, dict[str, Any]] = {}
        while len(got) < self.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(self.count)) - set(got))
                details = "\n".join(f"[{i}] {self.stderr_of(i)}" for i in missing)
                raise StormError(f"no {word!r} from processes {missing} in {timeout} s:\n{details}")
            try:
                index, line = self._lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise StormError(f"process {index} exited early:\n{self.stderr_of(index)}")
            message = json.loads(line)
            if message.get("kind") != word:
                raise StormError(f"process {index} said {message!r}, expected {word!r}")
            got[index] = message
        return got

    def run(self, config: Mapping[str, Any], timeout: float = 120.0) -> StormResult:
        """One round: every child starts an app on ``config`` at the same instant."""
        for index in range(self.count):
            self._send(index, json.dumps({"cmd": "arm", **config}))
        self._expect_all("armed", timeout=60)
        started = time.monotonic()
        for index in range(self.count):
            self._send(index, "go")
        reports = self._expect_all("report", timeout=timeout)
        wall = time.monotonic() - started
        released = [reports[i]["released_at"] for i in range(self.count)]
        return StormResult(
            [reports[i] for i in range(self.count)],
            (max(released) - min(released)) * 1000.0,
            wall,
        )

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    assert process.stdin is not None
                    process.stdin.close()
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pump in self._pumps:
            pump.join(5)
        for process in self._processes:
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._processes = []
        self._pumps = []


@contextlib.contextmanager
def storm_processes(
    count: int = 10, env: Mapping[str, str] | None = None
) -> Iterator[StormProcesses]:
    processes = StormProcesses(count, env)
    try:
        yield processes
    finally:
        processes.close()


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/nonexistent/pyncette-test/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/pyncette-test/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""What the storm children see of AWS: dummy credentials, no developer configuration."""
