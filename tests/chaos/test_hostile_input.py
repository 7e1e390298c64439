"""Scenario 6, hostile input, through the public API on every backend.

The table below states the expected outcome of each input: **accepted** (stored and read
back exactly, and it runs) or **rejected** with a ``ValueError`` whose message names
the problem, before anything is written. After the whole table has gone through a
running app, the store is read back raw (:func:`chaos._storm_helpers.dump_store`) and
every row must decode, and must rebuild into a task in the core: zero corrupt rows.
A task scheduled every second keeps running throughout.

Inputs on which the code does not (yet) do what the table says are listed in
:data:`KNOWN_BUGS`; the table test skips exactly those cells, and each has a minimal
regression test at the end of this module, marked ``xfail(strict=True)``, that starts
passing (and so fails the suite, as a reminder to unmark it) once fixed.

Also here: backend options with injection attempts (table names, namespaces, prefixes)
rejected before anything is written, and passwords in URLs never reaching an exception
or a log record, at DEBUG, on the way to a server that refuses them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from backend_dynamodb import REGION, moto_client
from backend_sql import (
    MYSQL_HOST,
    MYSQL_PORT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    mysql_options,
    postgres_url,
)
from backends import BackendConfig, port_open, require_service
from chaos._storm_helpers import dump_store, publish, redis_marker, sql_url, undecodable
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, FailureMode, Pyncette, PyncetteContext
from pyncette.dynamodb import dynamodb_repository
from pyncette.memory import memory_repository
from pyncette.mysql import mysql_repository
from pyncette.postgres import postgres_repository
from pyncette.redis import redis_repository
from pyncette.repository import RepositoryFactory
from pyncette.sqlite import sqlite_repository
from pyncette.task import STATIC_GROUP, Task

pytestmark = [pytest.mark.chaos]

S = datetime.timedelta(seconds=1)
UTC = datetime.UTC
EVERY = 10 * S
"""The interval of the hostile-but-accepted tasks and instances."""


async def noop(context: Context) -> None:
    return None


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def circular() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


# -- the table ------------------------------------------------------------------------

ACCEPTED_NAMES: dict[str, str] = {
    "colon": "a:b",
    "double-colon": "a::b:",
    "slash": "a/b/../c",
    "braces": "{x}",
    "lone-braces": "}a{",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "semicolon": "a;b",
    "sql-comment": "--",
    "sql-injection": "x'; DROP TABLE pyncette; --",
    "lua-injection": "]] redis.call('FLUSHALL') --[[",
    "percent": "%7B{x}%25",
    "unicode": "zadatak čćž 日本 🙂",
    "padded": " padded ",
    "one-space": " ",
    "tab-newline": "tab\there\nnext",
    "case-a": "Case",
    "case-b": "case",
    "max-255": "n" * 255,
    "emoji-255": "🙂" * 255,
}
"""Names that are fine as task, instance and dynamic-task names: stored and read back
exactly, distinct from each other (case and surrounding spaces matter)."""

REJECTED_NAMES: dict[str, tuple[object, str]] = {
    "empty": ("", "name"),
    "256-long": ("n" * 256, "longer than 255"),
    "64-KB": ("n" * 65536, "longer than 255"),
    "not-a-string": (42, "name"),
    "none": (None, "name"),
    "nul": ("a\x00b", "name"),
    "lone-surrogate": ("a\ud800b", "name"),
}
"""Instance names that must be refused (``name`` and ``longer than`` are what the
message must say)."""

TEMPLATE_NAMES: dict[str, str] = {
    "braces": "{jobs}",
    "sql-injection": "t'; DROP TABLE pyncette; --",
    "unicode": "模板 🙂",
    "percent": "%7Bt%7D",
    "padded": " t ",
    "max-255": "t" * 255,
}
"""Dynamic-task names that become storage groups (keys, partitions) as they are."""


@dataclass(frozen=True)
class InstanceCase:
    """``ctx.schedule_task(jobs, name, **spec)`` and what must come of it."""

    name: object
    spec: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None
    """A regular expression the ``ValueError`` must match; ``None``: accepted."""
    args: dict[str, Any] | None = None
    """For accepted cases: the arguments read back (default: ``spec`` minus options)."""
    at: datetime.datetime | None = None
    """For accepted cases: the first run read back (default: not checked)."""


OPTION_NAMES = {
    "schedule",
    "interval",
    "execute_at",
    "timezone",
    "execution_mode",
    "failure_mode",
    "lease_duration",
    "fast_forward",
}
NAIVE = datetime.datetime(2030, 1, 1, 0, 0, 5)
FAR_FUTURE = datetime.datetime.max.replace(tzinfo=UTC)
FAR_PAST = datetime.datetime(1, 1, 2, tzinfo=UTC)
BIG = 10**400
RUN_FOR = 20 * S
"""How long the table's app runs: every accepted task and instance runs twice."""
ONE_OFFS_RUN = {"past"} | ({"naive"} if T0 < NAIVE.astimezone(UTC) <= T0 + RUN_FOR else set())
"""The one-off instances of the table that run (and so are gone) while it runs."""

INSTANCE_CASES: dict[str, InstanceCase] = {
    **{
        f"name-{key}": InstanceCase(name, {"interval": EVERY, "n": index})
        for index, (key, name) in enumerate(ACCEPTED_NAMES.items())
    },
    **{
        f"name-{key}": InstanceCase(name, {"interval": EVERY}, rejected=message)
        for key, (name, message) in REJECTED_NAMES.items()
    },
    "payload-150KB": InstanceCase("p150", {"interval": EVERY, "payload": "w" * 150_000}),
    "payload-300KB": InstanceCase("p300", {"interval": EVERY, "payload": "x" * 300_000}),
    "payload-1MB": InstanceCase(
        "p1m", {"interval": EVERY, "payload": "y" * 1_000_000}, rejected="bytes"
    ),
    "unicode-args": InstanceCase(
        "uargs", {"interval": EVERY, "text": "čćž 日本 🙂 \x00 \ud800 \"'; --", "list": [1, None]}
    ),
    "int-keys": InstanceCase("ikeys", {"interval": EVERY, "m": {1: "a"}}, args={"m": {"1": "a"}}),
    "huge-int": InstanceCase("hugeint", {"interval": EVERY, "big": BIG}),
    "cron-seconds-tz": InstanceCase(
        "crontz", {"schedule": "* * * * * */10", "timezone": "Asia/Kathmandu"}
    ),
    "execute-far-future": InstanceCase("future", {"execute_at": FAR_FUTURE}, rejected="2200"),
    "execute-naive": InstanceCase("naive", {"execute_at": NAIVE}, at=NAIVE.astimezone(UTC)),
    "execute-far-past": InstanceCase("past", {"execute_at": FAR_PAST}),
    "cron-garbage": InstanceCase("c1", {"schedule": "not a cron"}, rejected="cron"),
    "cron-injection": InstanceCase(
        "c2", {"schedule": "* * * * *; DROP TABLE pyncette"}, rejected="cron"
    ),
    "cron-nul": InstanceCase("c3", {"schedule": "* * * * \x00"}, rejected="cron"),
    "unknown-timezone": InstanceCase(
        "tz1", {"schedule": "* * * * *", "timezone": "Mars/Olympus"}, rejected="timezone"
    ),
    "timezone-without-cron": InstanceCase(
        "tz2", {"interval": EVERY, "timezone": "Europe/Dublin"}, rejected="[Tt]imezone"
    ),
    "interval-zero": InstanceCase("i0", {"interval": datetime.timedelta(0)}, rejected="interval"),
    "interval-negative": InstanceCase("i1", {"interval": -S}, rejected="interval"),
    "interval-negative-number": InstanceCase("i2", {"interval": -5}, rejected="interval"),
    "interval-text": InstanceCase("i3", {"interval": "10"}, rejected="interval"),
    "interval-nan": InstanceCase("i4", {"interval": float("nan")}, rejected="interval"),
    "interval-inf": InstanceCase("i5", {"interval": float("inf")}, rejected="interval"),
    "interval-1e300": InstanceCase("i6", {"interval": 1e300}, rejected="interval"),
    "interval-huge": InstanceCase(
        "i7", {"interval": datetime.timedelta(days=999_999_999)}, rejected="interval"
    ),
    "lease-zero": InstanceCase("l0", {"interval": EVERY, "lease_duration": 0}, rejected="lease"),
    "lease-huge": InstanceCase(
        "l1",
        {"interval": EVERY, "lease_duration": datetime.timedelta(days=999_999_999)},
        rejected="lease",
    ),
    "no-schedule": InstanceCase("s0", {}, rejected="Exactly one of"),
    "two-schedules": InstanceCase(
        "s1", {"interval": EVERY, "execute_at": T0}, rejected="Exactly one of"
    ),
    "execute-at-text": InstanceCase("s2", {"execute_at": "2030-01-01"}, rejected="execute_at"),
    "enabled": InstanceCase("s3", {"interval": EVERY, "enabled": False}, rejected="enabled"),
    "execution-mode-garbage": InstanceCase(
        "m0", {"interval": EVERY, "execution_mode": "sometimes"}, rejected="ExecutionMode"
    ),
    "failure-mode-at-most-once": InstanceCase(
        "m1",
        {
            "interval": EVERY,
            "execution_mode": ExecutionMode.AT_MOST_ONCE,
            "failure_mode": FailureMode.UNLOCK,
        },
        rejected="not applicable",
    ),
    "arg-set": InstanceCase("a0", {"interval": EVERY, "p": {1, 2}}, rejected="JSON"),
    "arg-bytes": InstanceCase("a1", {"interval": EVERY, "p": b"\x00"}, rejected="JSON"),
    "arg-object": InstanceCase("a2", {"interval": EVERY, "p": object()}, rejected="JSON"),
    "arg-nan": InstanceCase("a3", {"interval": EVERY, "p": float("nan")}, rejected="JSON"),
    "arg-circular": InstanceCase("a4", {"interval": EVERY, "p": circular()}, rejected="JSON"),
    "arg-tuple-key": InstanceCase("a5", {"interval": EVERY, "p": {(1, 2): 3}}, rejected="JSON"),
    "arg-deep-nesting": InstanceCase(
        "a6", {"interval": EVERY, "p": nested(100_000)}, rejected="JSON"
    ),
    "arg-named-name": InstanceCase("r0", {"interval": EVERY, "name": "evil"}, rejected="name"),
    "arg-named-func": InstanceCase("r1", {"interval": EVERY, "func": "evil"}, rejected="func"),
    "arg-named-dynamic": InstanceCase(
        "r2", {"interval": EVERY, "dynamic": True}, rejected="dynamic"
    ),
}

ALL = "*"
KNOWN_BUGS: dict[str, tuple[str, set[str] | str]] = {
    # case: (regression test, backends where the table's outcome is not met); every bug
    # this table found is fixed, and its regression test below passes
}


REJECTED_BY_DYNAMODB = {"payload-300KB": "bytes"}
"""Cases that fit everywhere but in a DynamoDB item: the table's local secondary index
holds a copy of the item, and both copies count against one 400 KB limit."""


def for_backend(case_id: str, case: InstanceCase, backend: str) -> InstanceCase:
    rejected = REJECTED_BY_DYNAMODB.get(case_id)
    if rejected is not None and backend.startswith("dynamodb"):
        return replace(case, rejected=rejected)
    return case


def known_bug(case: str, backend: str) -> bool:
    entry = KNOWN_BUGS.get(case)
    return entry is not None and (entry[1] == ALL or backend in entry[1])


def expected_args(case: InstanceCase) -> dict[str, Any]:
    if case.args is not None:
        return case.args
    args = {k: v for k, v in case.spec.items() if k not in OPTION_NAMES}
    loaded: dict[str, Any] = json.loads(json.dumps(args))
    return loaded


# -- definitions: no backend needed ---------------------------------------------------


DEFINITIONS = [
    # (id, decorator, options, ValueError pattern or None for accepted)
    *[
        pytest.param("task", {"name": n, "interval": S}, None, id=f"name-{k}")
        for k, n in ACCEPTED_NAMES.items()
    ],
    pytest.param("task", {"name": "", "interval": S}, None, id="name-empty-is-the-function-name"),
    pytest.param("task", {"name": "n" * 256, "interval": S}, "longer than 255", id="name-256"),
    pytest.param("task", {"name": "n" * 65536, "interval": S}, "longer than 255", id="name-64KB"),
    pytest.param(
        "task", {"name": "a\x00b", "interval": S}, "name", id="name-nul",
    ),
    pytest.param(
        "task", {"name": "a\ud800b", "interval": S}, "name", id="name-lone-surrogate",
    ),
    pytest.param("task", {"name": STATIC_GROUP, "interval": S}, "reserved", id="name-reserved"),
    *[
        pytest.param("task", {"schedule": cron}, "cron", id=f"cron-{k}")
        for k, cron in {
            "garbage": "not a cron",
            "empty": "",
            "three-fields": "* * *",
            "eight-fields": "* * * * * * * *",
            "minute-61": "61 * * * *",
            "second-99": "* * * * * 99",
            "reboot": "@reboot",
            "injection": "* * * * *; DROP TABLE pyncette",
            "nul": "* * * * \x00",
            "not-a-string": 5,
        }.items()
    ],
    pytest.param(
        "task", {"schedule": "0 0 30 2 *"}, "cron", id="cron-february-30",
    ),
    pytest.param("task", {"schedule": "0 0 29 2 *"}, None, id="cron-leap-day"),
    pytest.param("task", {"schedule": "0 0 * * * 30"}, None, id="cron-with-seconds"),
    *[
        pytest.param(
            "task", {"schedule": "* * * * *", "timezone": tz}, "[Tt]imezone", id=f"timezone-{k}"
        )
        for k, tz in {
            "unknown": "Mars/Olympus",
            "empty": "",
            "nul": "Europe/\x00",
            "not-a-string": 5,
            "missing-file": "/nonexistent/zoneinfo",
        }.items()
    ],
    pytest.param(
        "task", {"schedule": "* * * * *", "timezone": "/etc/passwd"}, "[Tt]imezone",
        id="timezone-a-file-that-is-no-zone",
    ),
    *[
        pytest.param("task", {"schedule": "* * * * *", "timezone": tz}, None, id=f"timezone-{tz}")
        for tz in ("Europe/Dublin", "UTC+12", "EST5EDT", "Asia/Kathmandu")
    ],
    pytest.param("task", {"interval": S, "timezone": "UTC"}, "Timezone", id="timezone-interval"),
    *[
        pytest.param("task", {"interval": value}, "interval", id=f"interval-{k}")
        for k, value in {
            "zero": datetime.timedelta(0),
            "negative": -S,
            "zero-number": 0,
            "negative-number": -0.5,
            "text": "5",
            "bool": True,
        }.items()
    ],
    *[
        pytest.param(
            "task", {"interval": value}, "interval", id=f"interval-{k}",
        )
        for k, value in {
            "nan": float("nan"),
            "inf": float("inf"),
            "1e300": 1e300,
            "huge": datetime.timedelta(days=999_999_999),
        }.items()
    ],
    pytest.param("task", {"interval": 0.5}, None, id="interval-half-second"),
    pytest.param("task", {"interval": datetime.timedelta(days=3650)}, None, id="interval-10-years"),
    pytest.param("task", {"interval": S, "lease_duration": -S}, "lease", id="lease-negative"),
    pytest.param(
        "task", {"interval": S, "lease_duration": datetime.timedelta(days=999_999_999)}, "lease",
        id="lease-huge",
    ),
    *[
        pytest.param("task", {"interval": S, "p": value}, "JSON", id=f"arg-{k}")
        for k, value in {
            "set": {1, 2},
            "bytes": b"x",
            "object": object(),
            "nan": float("nan"),
            "inf": float("inf"),
            "circular": circular(),
            "tuple-key": {(1, 2): 3},
        }.items()
    ],
    pytest.param(
        "task", {"interval": S, "p": nested(100_000)}, "JSON", id="arg-deep-nesting",
    ),
    pytest.param(
        "task", {"interval": S, "p": "z" * 1_000_000}, "at most 358400 bytes", id="arg-1MB-static"
    ),
    pytest.param("task", {"interval": S, "p": {1: "a"}}, None, id="arg-int-key"),
    *[
        pytest.param(
            "task", {"interval": S, key: value}, key, id=f"arg-named-{key}",
        )
        for key, value in {"func": "evil", "dynamic": True, "parent_task": None}.items()
    ],
    pytest.param(
        "task", {"interval": S, "fast_forward": "maybe"}, "fast_forward", id="fast-forward-text",
    ),
    pytest.param("dynamic", {"execute_at": "2030-01-01"}, "execute_at", id="execute-at-text"),
    pytest.param("dynamic", {"execute_at": NAIVE}, None, id="execute-at-naive"),
    pytest.param("partitioned", {"partition_count": 0}, "Partition count", id="partitions-0"),
    pytest.param("partitioned", {"partition_count": "8"}, "partition_count", id="partitions-text"),
    pytest.param(
        "partitioned", {"partition_count": 2**20}, "partition_count", id="partitions-a-million",
    ),
    pytest.param(
        "partitioned", {"name": "p" * 255, "partition_count": 8}, "name", id="partitioned-name-255",
    ),
    pytest.param(
        "partitioned", {"name": "p" * 253, "partition_count": 8}, None, id="partitioned-name-253"
    ),
]  # fmt: skip


@pytest.mark.parametrize(("decorator", "options", "rejected"), DEFINITIONS)
def test_definition(decorator: str, options: dict[str, Any], rejected: str | None) -> None:
    """Decorating: rejected with a ``ValueError`` matching ``rejected``, or accepted."""
    app = Pyncette()

    def declare() -> Task:
        if decorator == "task":
            return app.task(**options)(noop)
        if decorator == "dynamic":
            return app.dynamic_task(**options)(noop)
        return app.partitioned_task(**options)(noop)

    if rejected is None:
        task = declare()
        assert app.tasks[task.name] is task
        assert task.name == (options.get("name") or "noop")
    else:
        with pytest.raises(ValueError, match=rejected):
            declare()
        assert dict(app.tasks) == {}


# -- instances, names and groups on every backend --------------------------------------


@dataclass
class Outcome:
    """What came of each case, for one report at the end."""

    wrong: list[str] = field(default_factory=list)

    def check(self, case: str, ok: bool, detail: str) -> None:
        if not ok:
            self.wrong.append(f"{case}: {detail}")


async def _schedule(
    ctx: PyncetteContext, template: Task, case_id: str, case: InstanceCase, outcome: Outcome
) -> bool:
    """Run one case; return whether it was accepted."""
    try:
        await ctx.schedule_task(template, case.name, **case.spec)  # type: ignore[arg-type]
    except ValueError as exc:
        if case.rejected is None:
            outcome.check(case_id, False, f"refused: {exc}")
        else:
            outcome.check(
                case_id,
                re.search(case.rejected, str(exc)) is not None,
                f"message {str(exc)[:200]!r} does not match {case.rejected!r}",
            )
        if isinstance(case.name, str) and not case_id.startswith("name-"):
            # (an invalid name cannot be looked up on every backend: see
            # test_reading_invalid_names_is_not_a_driver_error; the final dump shows
            # that no row was written for it)
            outcome.check(
                case_id,
                await ctx.get_task(template, case.name) is None,
                "refused, but a row was written",
            )
        return False
    except Exception as exc:
        outcome.check(case_id, False, f"{type(exc).__name__} instead of ValueError: {exc!r}"[:300])
        return False
    if case.rejected is not None:
        outcome.check(case_id, False, "accepted, expected a ValueError")
        return True
    assert isinstance(case.name, str)
    state = await ctx.get_task(template, case.name)
    if state is None:  # a one-off due at once may have run (and been removed) already
        outcome.check(case_id, case.spec.get("execute_at") == FAR_PAST, "not stored")
        return True
    outcome.check(case_id, state.task.name == case.name, f"read back as {state.task.name!r}")
    outcome.check(case_id, state.task.args == expected_args(case), "arguments changed")
    if case.at is not None:
        delta = abs(state.scheduled_at - case.at)
        outcome.check(
            case_id, delta < datetime.timedelta(milliseconds=1), f"runs at {state.scheduled_at}"
        )
    return True


@pytest.mark.anyio
@pytest.mark.injected_clock_only(reason="one long virtual-time run per backend")
async def test_hostile_input_table_on_every_backend(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    """Every case of the tables on a running app; then every stored row decodes, every
    accepted task and instance ran under its exact name, and the heartbeat never
    missed a second."""
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    heartbeats: list[datetime.datetime] = []
    app = make_app(backend, clock, poll_interval=S)

    @app.task(interval=S)
    async def heartbeat(context: Context) -> None:
        heartbeats.append(context.scheduled_at)

    async def record(context: Context) -> None:
        runs[(context.task.template.name, context.task.name)] += 1

    static_names = {f"static-{k}": name for k, name in ACCEPTED_NAMES.items()}
    for name in static_names.values():
        app.task(name=name, interval=EVERY)(record)
    jobs = app.dynamic_task(name="jobs")(record)
    shards = app.partitioned_task(name="shards", partition_count=4)(record)
    templates = {name: app.dynamic_task(name=name)(record) for name in TEMPLATE_NAMES.values()}
    hostile_shards = app.partitioned_task(name="p'{x}:; --", partition_count=3)(record)

    outcome = Outcome()
    accepted: set[str] = set()
    skipped = sorted(case for case in INSTANCE_CASES if known_bug(case, backend.name))
    async with running(app) as ctx:
        for case_id, case in INSTANCE_CASES.items():
            if case_id in skipped:
                continue
            case = for_backend(case_id, case, backend.name)
            if await _schedule(ctx, jobs, case_id, case, outcome) and isinstance(case.name, str):
                accepted.add(case.name)
        shard_names = set(ACCEPTED_NAMES.values())
        for key, name in ACCEPTED_NAMES.items():
            await _schedule(
                ctx, shards, f"shard-{key}", InstanceCase(name, {"interval": EVERY}), outcome
            )
            await _schedule(
                ctx,
                hostile_shards,
                f"hostile-shard-{key}",
                InstanceCase(name, {"interval": EVERY}),
                outcome,
            )
        for key, template in templates.items():
            await _schedule(
                ctx, template, f"template-{key}", InstanceCase(key, {"interval": EVERY}), outcome
            )

        await clock.advance(RUN_FOR)

        # listing pages through every instance under its exact name
        listed: list[str] = []
        token = None
        while True:
            page = await ctx.list_tasks(jobs, limit=7, continuation_token=token)
            listed += [state.task.name for state in page.tasks]
            token = page.continuation_token
            if token is None:
                break
        outcome.check(
            "list_tasks", sorted(listed) == sorted(accepted - ONE_OFFS_RUN), f"listed {listed}"
        )
        for name in ("it's", 'say "hi"', "x'; DROP TABLE pyncette; --", "zadatak čćž 日本 🙂"):
            await ctx.unschedule_task(jobs, name)
            outcome.check(
                f"unschedule {name!r}", await ctx.get_task(jobs, name) is None, "still there"
            )
            accepted.discard(name)

        dump = await dump_store(backend.name, backend.options, ctx.repository)
        problems = undecodable(dump, app.tasks)
    expected_rows = {
        STATIC_GROUP: {"heartbeat", *static_names.values()},
        "jobs": accepted - ONE_OFFS_RUN,
        **{name: {name} for name in templates},
    }
    stored = {
        group: dump.names(group)
        for group in dump.groups()
        if not group.startswith(("shards:", "p'{x}:; --:"))
    }
    shard_rows = {row.name for row in dump.rows if row.group.startswith("shards:")}
    hostile_shard_rows = {row.name for row in dump.rows if row.group.startswith("p'{x}:; --:")}

    assert problems == [], f"corrupt or undecodable rows: {problems}"
    assert outcome.wrong == [], "\n".join(outcome.wrong)
    assert stored == expected_rows
    assert shard_rows == hostile_shard_rows == shard_names
    # everything accepted ran, under its exact name, every 10 s (at 10 and 20 s)
    for name in static_names.values():
        assert runs[(name, name)] == 2, name
    for name in accepted - {"future", "naive", "past", "crontz"}:
        assert runs[("jobs", name)] == 2, name
    assert runs[("jobs", "past")] == 1
    assert runs[("jobs", "naive")] == (1 if "naive" in ONE_OFFS_RUN else 0)
    assert runs[("jobs", "crontz")] == 2
    for name in shard_names:
        assert runs[("shards", name)] == 2 and runs[("p'{x}:; --", name)] == 2, name
    for name in templates:
        assert runs[(name, name)] == 2, name
    # the heartbeat ran every second throughout
    assert heartbeats == [T0 + i * S for i in range(1, 21)]
    publish(
        {
            "scenario": "hostile",
            "backend": backend.name,
            "cases": len(INSTANCE_CASES) + 2 * len(ACCEPTED_NAMES) + len(TEMPLATE_NAMES),
            "rows_checked": len(dump.rows),
            "corrupt_rows": len(problems),
            "known_bug_cells_skipped": skipped,
        }
    )


# -- backend options with injection attempts --------------------------------------------

BAD_TABLE_NAMES = [
    'x"; DROP TABLE pyncette; --',
    "t; DROP TABLE t",
    "`t`",
    "t t",
    "",
    "t\x00",
    "ünï",
    "t" * 48,
    42,
]
BAD_NAMESPACES = [
    "a{b",
    "a}b",
    "a:b",
    "*",
    "a b",
    "a\nb",
    "a\x00",
    "'",
    '"',
    "n" * 101,
    "ns') redis.call('FLUSHALL') --",
    42,
]
BAD_DYNAMODB_TABLES = ["ab", "t'; --", "t" * 256, "t t", "", "t\x00t", 42]
BAD_PREFIXES = ["a:b", "a#b", "", "p" * 256, "p p", "p\x00", "ü"]


@dataclass
class Target:
    """A real server and what is on it, to show that a refused start wrote nothing."""

    factory: RepositoryFactory
    options: dict[str, Any]
    option: str


@pytest.fixture
def sql_target(request: pytest.FixtureRequest) -> Iterator[Target]:
    kind: str = request.param
    if kind == "sqlite":
        tmp = request.getfixturevalue("tmp_path")
        yield Target(sqlite_repository, {"sqlite_database": str(tmp / "t.db")}, "sqlite_table_name")
    elif kind == "postgres":
        database = request.getfixturevalue("postgres_database")
        yield Target(
            postgres_repository, {"postgres_url": postgres_url(database)}, "postgres_table_name"
        )
    else:
        database = request.getfixturevalue("mysql_database")
        yield Target(mysql_repository, mysql_options(database), "mysql_table_name")


async def _sql_tables(kind: str, options: dict[str, Any]) -> list[str]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    if kind == "sqlite" and not os.path.exists(options["sqlite_database"]):
        return []
    engine = create_async_engine(sql_url(kind, options))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: sorted(sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def _sql_param(kind: str) -> Any:
    marks = [] if kind == "sqlite" else [pytest.mark.service(kind)]
    return pytest.param(kind, marks=marks, id=kind)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "sql_target", [_sql_param(k) for k in ("sqlite", "postgres", "mysql")], indirect=True
)
async def test_sql_table_names_with_injections_write_nothing(
    sql_target: Target, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["sql_target"]
    before = await _sql_tables(kind, sql_target.options)
    for bad in BAD_TABLE_NAMES:
        options: dict[str, Any] = {**sql_target.options, sql_target.option: bad}
        app = Pyncette(repository_factory=sql_target.factory, **options)
        app.task(interval=S)(noop)
        with pytest.raises(ValueError, match=sql_target.option):
            async with app.create():
                pass
    assert await _sql_tables(kind, sql_target.options) == before


@pytest.mark.anyio
@pytest.mark.service("redis")
async def test_redis_namespaces_with_injections_write_nothing(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        for bad in BAD_NAMESPACES:
            app = Pyncette(
                repository_factory=redis_repository, redis_url=redis_url, redis_namespace=bad
            )
            app.task(interval=S)(noop)
            with pytest.raises(ValueError, match="redis_namespace"):
                async with app.create():
                    pass
            if isinstance(bad, str):
                assert not await client.exists(redis_marker(bad))
                pattern = "pyncette:{" + re.sub(r"([*?\[\]\\])", r"\\\1", bad) + "*"
                assert [k async for k in client.scan_iter(match=pattern, count=1000)] == []
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.service("dynamodb")
async def test_dynamodb_table_names_and_prefixes_with_injections_write_nothing(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend_dynamodb import isolate_aws_env

    isolate_aws_env(monkeypatch)
    client = moto_client(dynamodb_server)
    try:
        before = client.list_tables()["TableNames"]
        base: dict[str, Any] = {
            "dynamodb_endpoint": dynamodb_server,
            "dynamodb_region_name": REGION,
        }
        cases = [("dynamodb_table_name", bad) for bad in BAD_DYNAMODB_TABLES]
        cases += [("dynamodb_partition_prefix", bad) for bad in BAD_PREFIXES]
        for option, bad in cases:
            extra: dict[str, Any] = {option: bad}
            if option == "dynamodb_partition_prefix":
                extra["dynamodb_table_name"] = "pyncette-never-created"
            app = Pyncette(repository_factory=dynamodb_repository, **base, **extra)
            app.task(interval=S)(noop)
            with pytest.raises(ValueError, match=option):
                async with app.create():
                    pass
        assert client.list_tables()["TableNames"] == before
    finally:
        client.close()


# -- passwords in URLs --------------------------------------------------------------------

SECRET = "s3cr3t-Hunter2"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _credential_cases() -> list[Any]:
    """(id, factory, options, server it needs); ``{redis}`` in a Redis URL is the test
    server's ``host:port``, ``{closed}`` a local port nobody listens on."""
    pg = f"{PG_HOST}:{PG_PORT}"
    mysql = {"mysql_host": MYSQL_HOST, "mysql_port": MYSQL_PORT, "mysql_database": "db"}
    cases: list[tuple[str, RepositoryFactory, dict[str, Any], str | None]] = [
        (
            "postgres-refused",
            postgres_repository,
            {"postgres_url": f"postgres://u:{SECRET}@127.0.0.1:{{closed}}/db"},
            None,
        ),
        (
            "postgres-unknown-role",
            postgres_repository,
            {"postgres_url": f"postgresql://nobody:{SECRET}@{pg}/postgres"},
            "postgres",
        ),
        (
            "postgres-bad-port",
            postgres_repository,
            {"postgres_url": f"postgresql://u:{SECRET}@{PG_HOST}:notaport/db"},
            None,
        ),
        (
            "postgres-bad-scheme",
            postgres_repository,
            {"postgres_url": f"oracle://u:{SECRET}@host/db"},
            None,
        ),
        (
            "postgres-missing-table",
            postgres_repository,
            {
                "postgres_url": f"postgresql://{PG_USER}:{SECRET}@{pg}/postgres",
                "postgres_table_name": "never_created_here",
                "postgres_skip_table_create": True,
            },
            "postgres",
        ),
        (
            "mysql-refused",
            mysql_repository,
            {**mysql, "mysql_port": "{closed}", "mysql_user": "u", "mysql_password": SECRET},
            None,
        ),
        (
            "mysql-wrong-password",
            mysql_repository,
            {**mysql, "mysql_user": "nobody", "mysql_password": SECRET},
            "mysql",
        ),
        (
            "redis-refused",
            redis_repository,
            {"redis_url": f"redis://u:{SECRET}@127.0.0.1:{{closed}}/0"},
            None,
        ),
        (
            "redis-wrong-password",
            redis_repository,
            {"redis_url": f"redis://nobody:{SECRET}@{{redis}}/0"},
            "redis",
        ),
        (
            "redis-bad-scheme",
            redis_repository,
            {"redis_url": f"http://u:{SECRET}@127.0.0.1:6379"},
            None,
        ),
        (
            "redis-bad-port",
            redis_repository,
            {"redis_url": f"redis://u:{SECRET}@127.0.0.1:notaport"},
            None,
        ),
        (
            "dynamodb-endpoint-userinfo",
            dynamodb_repository,
            {
                "dynamodb_endpoint": f"http://u:{SECRET}@127.0.0.1:{{closed}}",
                "dynamodb_region_name": REGION,
            },
            None,
        ),
    ]
    return [
        pytest.param(
            factory,
            options,
            server,
            id=name,
            marks=[pytest.mark.service(server)] if server else [],
        )
        for name, factory, options, server in cases
    ]


async def _start(app: Pyncette) -> None:
    async with asyncio.timeout(60), app.create():
        pass


@pytest.mark.anyio
@pytest.mark.parametrize(("factory", "options", "server"), _credential_cases())
async def test_passwords_in_urls_never_reach_errors_or_logs(
    factory: RepositoryFactory,
    options: dict[str, Any],
    server: str | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Starting an app whose backend refuses it: the error, its whole chain, and every
    log record of every logger at DEBUG are free of the password."""
    from backend_dynamodb import isolate_aws_env

    isolate_aws_env(monkeypatch)
    if server in ("postgres", "mysql"):
        host, port = (PG_HOST, PG_PORT) if server == "postgres" else (MYSQL_HOST, MYSQL_PORT)
        require_service(server, port_open(host, port), f"{host}:{port}")
    values = {"closed": str(_closed_port())}
    if server == "redis":
        values["redis"] = urllib.parse.urlsplit(request.getfixturevalue("redis_url")).netloc
    options = {k: v.format(**values) if isinstance(v, str) else v for k, v in options.items()}
    if options.get("mysql_port") == values["closed"]:
        options["mysql_port"] = int(values["closed"])
    caplog.set_level(logging.DEBUG)
    app = Pyncette(repository_factory=factory, **options)
    app.task(interval=S)(noop)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - any error, as long as it is clean
        await _start(app)
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    leaks = [repr(e) for e in chain if SECRET in str(e) or SECRET in repr(e)]
    assert leaks == []
    logged = [r for r in caplog.records if SECRET in r.getMessage() or SECRET in str(r.args)]
    assert [f"{r.name}: {r.getMessage()}" for r in logged] == []
    assert SECRET not in caplog.text


# -- regressions: one minimal test per bug found -----------------------------------------


@pytest.mark.parametrize("name", ["a\x00b", "a\ud800b"], ids=["nul", "lone-surrogate"])
@pytest.mark.anyio
async def test_nul_and_surrogate_names_are_value_errors(name: str) -> None:
    """PostgreSQL cannot store NUL in text and no backend can store a lone surrogate
    (it has no UTF-8 form): such names fail at the first write with a driver error, or
    (NUL elsewhere) are stored, so one app's data cannot move to PostgreSQL. The core
    should refuse them, for every backend alike, where it checks names."""
    app = Pyncette(repository_factory=memory_repository)
    with pytest.raises(ValueError, match="name"):
        app.task(name=name, interval=S)(noop)
    jobs = app.dynamic_task(name="jobs")(noop)
    async with app.create() as ctx:
        with pytest.raises(ValueError, match="name"):
            await ctx.schedule_task(jobs, name, interval=S)


@pytest.mark.parametrize(
    "options",
    [
        {"interval": float("nan")},
        {"interval": float("inf")},
        {"interval": 1e300},
        {"interval": datetime.timedelta(days=999_999_999)},
        {"interval": S, "lease_duration": datetime.timedelta(days=999_999_999)},
        {"interval": S, "lease_duration": float("inf")},
    ],
    ids=[
        "interval-nan",
        "interval-inf",
        "interval-1e300",
        "interval-huge",
        "lease-huge",
        "lease-inf",
    ],
)
def test_out_of_range_durations_are_value_errors(options: dict[str, Any]) -> None:
    """``nan`` is a ValueError that does not name the option, ``inf`` and ``1e300`` an
    OverflowError; a ``timedelta`` too large to add to a date passes decoration and then
    fails ``app.create()`` (static task) or ``schedule_task`` with an OverflowError, or
    is stored: a lease that large cannot be claimed (see the next test)."""
    app = Pyncette()
    option = "lease" if "lease_duration" in options else "interval"
    with pytest.raises(ValueError, match=option):
        app.task(**options)(noop)


@pytest.mark.parametrize("value", [float("inf"), 1e300], ids=["inf", "1e300"])
@pytest.mark.anyio
async def test_out_of_range_poll_interval_is_a_value_error(value: float) -> None:
    """The app's own durations have the same hole: ``options.positive_seconds`` lets
    ``inf`` and ``1e300`` through and ``AppSettings.from_options`` then raises
    OverflowError building the ``timedelta`` (``nan`` is refused properly)."""
    options: dict[str, Any] = {"poll_interval": value}  # a number of seconds, as 1.x took
    app = Pyncette(repository_factory=memory_repository, **options)
    with pytest.raises(ValueError, match="poll_interval"):
        await _start(app)


@pytest.mark.anyio
@pytest.mark.injected_clock_only(reason="virtual time")
async def test_an_instance_with_a_huge_lease_does_not_stop_other_tasks(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The consequence of the previous bug on the memory backend (Redis and DynamoDB
    alike): claiming the row computes ``now + lease_duration``, which overflows; the
    claim raises, the tick fails, and every group polled after it in the tick (and the
    row itself) is never claimed again. On memory the row is also left half locked."""
    app = make_app(BackendConfig("memory", memory_repository, shared=False), clock, poll_interval=S)
    runs: list[str] = []

    @app.dynamic_task()
    async def first(context: Context) -> None:
        runs.append(context.task.name)

    @app.dynamic_task()
    async def second(context: Context) -> None:
        runs.append(context.task.name)

    async with running(app) as ctx:
        with contextlib.suppress(ValueError):  # refused up front: the fix
            await ctx.schedule_task(
                first, "poison", interval=S, lease_duration=datetime.timedelta(days=999_999_999)
            )
        await ctx.schedule_task(second, "innocent", interval=S)
        await clock.advance(5 * S)
        state = await ctx.get_task(first, "poison")
    assert runs.count("innocent") == 5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert state is None or (state.locked_by is None) == (state.locked_until is None)


@pytest.mark.anyio
@pytest.mark.service("redis")
async def test_redis_keeps_far_future_times(redis_url: str) -> None:
    """Redis stores times as microseconds formatted by Lua from a double, exact only to
    2**53 µs (year 2255). 9999-12-31T23:59:59.999999 rounds up past ``datetime.max``:
    the row is written, then it and the whole group fail to decode (``get_task`` and
    ``list_tasks`` raise OverflowError; so does every claim once it is the group's
    next due row). Other backends store it exactly."""
    from backend_redis import delete_namespace, unique_namespace

    namespace = unique_namespace()
    app = Pyncette(
        repository_factory=redis_repository, redis_url=redis_url, redis_namespace=namespace
    )
    jobs = app.dynamic_task(name="jobs")(noop)
    try:
        async with app.create() as ctx:
            # refused before anything is written: times up to 2200 are stored exactly
            with pytest.raises(ValueError, match="2200"):
                await ctx.schedule_task(jobs, "future", execute_at=FAR_FUTURE)
            late = datetime.datetime(2199, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
            await ctx.schedule_task(jobs, "late", execute_at=late)
            state = await ctx.get_task(jobs, "late")
            assert state is not None and state.scheduled_at == late
            assert len((await ctx.list_tasks(jobs)).tasks) == 1
    finally:
        await delete_namespace(redis_url, namespace)


@pytest.mark.anyio
async def test_dynamodb_refuses_oversized_instances_with_a_value_error(
    dynamodb_backend: BackendConfig,
) -> None:
    """DynamoDB items are at most 400 KB, counted once in the table and once in its
    index (docs/backends/dynamodb.md). A larger instance spec reached DynamoDB and came
    back as botocore's ClientError (ValidationException); nothing was written, but the
    error was not the documented ``ValueError``."""
    app = Pyncette(
        repository_factory=dynamodb_backend.repository_factory, **dynamodb_backend.options
    )
    jobs = app.dynamic_task(name="jobs")(noop)
    async with app.create() as ctx:
        with pytest.raises(ValueError, match="bytes"):
            await ctx.schedule_task(jobs, "big", interval=S, payload="y" * 1_000_000)
        assert await ctx.get_task(jobs, "big") is None


def test_impossible_cron_dates_are_value_errors_at_decoration() -> None:
    """``0 0 30 2 *`` is valid syntax for croniter but never matches; decoration accepts
    it and ``app.create()`` (static task) or ``schedule_task`` then fails with
    croniter's CroniterBadDateError ("failed to find next date")."""
    with pytest.raises(ValueError, match="cron"):
        Pyncette().task(schedule="0 0 30 2 *")(noop)


@pytest.mark.parametrize("keyword", ["name", "func", "parent_task", "dynamic", "partition_count"])
@pytest.mark.anyio
async def test_reserved_keywords_are_value_errors(keyword: str) -> None:
    """Keywords of ``Task`` that are neither options nor arguments: ``name``, ``func``
    and ``parent_task`` given to ``schedule_task`` (or ``func`` to a decorator) raise
    TypeError ("got multiple values"); ``dynamic`` and ``partition_count`` are silently
    taken as the task's kind rather than as arguments (``@app.task(dynamic=True)``
    declares a dynamic task; an instance with ``partition_count=3`` stores it in its
    spec and is partitioned)."""
    arguments: dict[str, Any] = {keyword: 1}
    app = Pyncette(repository_factory=memory_repository)
    jobs = app.dynamic_task(name="jobs")(noop)
    async with app.create() as ctx:
        with pytest.raises(ValueError, match=keyword):
            await ctx.schedule_task(jobs, "i", interval=S, **arguments)


def test_deeply_nested_arguments_are_value_errors() -> None:
    """Arguments nested deeper than the JSON encoder's recursion limit raise
    RecursionError, not the documented ValueError."""
    with pytest.raises(ValueError, match="JSON"):
        Pyncette().task(interval=S, p=nested(100_000))(noop)


def test_timezone_errors_name_the_timezone() -> None:
    """``timezone="/etc/passwd"`` is read as a zone file by dateutil, which raises
    ``ValueError("magic not found")``; the message names neither the option nor the
    value."""
    with pytest.raises(ValueError, match="timezone"):
        Pyncette().task(schedule="* * * * *", timezone="/etc/passwd")(noop)


def test_flags_given_as_text_are_not_read_as_true() -> None:
    """``fast_forward="no"`` and ``enabled="false"`` (as configuration read from the
    environment arrives) are ``bool()``-ed to True; the app's and backends' own flags
    go through ``options.boolean``, which reads "no" as False or refuses garbage."""
    task = Pyncette().task(interval=S, fast_forward="no", enabled="false")(noop)
    assert task.fast_forward is False and task.enabled is False


def test_partition_count_has_an_upper_bound() -> None:
    """``partition_count`` builds a list of every partition at decoration and polls one
    group per partition every tick: 10**9 exhausts memory (the probe was OOM-killed);
    2**20 takes a second and then a million claims per tick."""
    with pytest.raises(ValueError, match="partition_count"):
        Pyncette().partitioned_task(partition_count=2**20)(noop)


@pytest.mark.anyio
@pytest.mark.service("postgres")
async def test_partitioned_task_names_leave_room_for_the_partition(
    postgres_backend: BackendConfig,
) -> None:
    """A partitioned task's groups are ``<name>:<partition>``: with a 255-character name
    (accepted) they are 257 long, which PostgreSQL's VARCHAR(255) refuses at the first
    ``schedule_task`` (DBAPIError). SQLite, MySQL (bytes), Redis and DynamoDB store it."""
    app = Pyncette(
        repository_factory=postgres_backend.repository_factory, **postgres_backend.options
    )
    declared: Task | ValueError
    try:
        declared = app.partitioned_task(name="p" * 255, partition_count=8)(noop)
    except ValueError as exc:
        declared = exc
    if isinstance(declared, ValueError):  # refused when declared: one possible fix
        assert "name" in str(declared)
        return
    shards = declared
    async with app.create() as ctx:
        with pytest.raises(ValueError, match="name"):  # or refused here: the other
            await ctx.schedule_task(shards, "x", interval=S)


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["", "n" * 65536], ids=["empty", "64KB"])
async def test_reading_invalid_names_is_not_a_driver_error(
    dynamodb_backend: BackendConfig, name: str
) -> None:
    """``get_task`` and ``unschedule_task`` pass the instance name to the backend
    unchecked. On DynamoDB an empty name, or one over the 1 KB sort-key limit, is
    botocore's ClientError (ValidationException); elsewhere it is ``None`` / a no-op.
    Checking the name as ``schedule_task`` does makes it a ``ValueError`` everywhere."""
    app = Pyncette(
        repository_factory=dynamodb_backend.repository_factory, **dynamodb_backend.options
    )
    jobs = app.dynamic_task(name="jobs")(noop)
    async with app.create() as ctx:
        with pytest.raises(ValueError, match="name"):
            await ctx.get_task(jobs, name)
        with pytest.raises(ValueError, match="name"):
            await ctx.unschedule_task(jobs, name)
