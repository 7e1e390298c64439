"""The app every chaos process runs, its set-up, and reading the store's final state.

Tasks (every one runs the same body, which logs its start and end and may fail):

* four static tasks, cron ``* * * * * *``: at-least-once with each failure mode
  (``s_alo_none``, ``s_alo_unlock``, ``s_alo_commit``) and at-most-once (``s_amo``);
* ``dyn``: a dynamic task with :attr:`Workload.dynamic` interval instances, their modes
  cycling through the same four combinations;
* ``once``: a dynamic task with :attr:`Workload.oneoffs` one-off (``execute_at``)
  instances spread over the chaos window, modes cycling likewise.

An execution fails (raises :class:`InjectedFailure`) when a stable hash of its run
picks it and it starts less than :attr:`Workload.fail_within` seconds late; retries
come later than that (after a lease, or after the unlocks of a few quick retries), so
every run eventually succeeds and the checker knows when to expect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.log import ExecLog
from pyncette import Context, ExecutionMode, FailureMode, Pyncette
from pyncette.model import Lease, TaskFunc
from pyncette.repository import (
    ClaimResult,
    Commit,
    History,
    Registration,
    Repository,
    RepositoryFactory,
    RepositoryProxy,
)
from pyncette.task import Task
from pyncette.timeutil import to_epoch_us

MODES: tuple[tuple[ExecutionMode, FailureMode], ...] = (
    (ExecutionMode.AT_LEAST_ONCE, FailureMode.NONE),
    (ExecutionMode.AT_LEAST_ONCE, FailureMode.UNLOCK),
    (ExecutionMode.AT_LEAST_ONCE, FailureMode.COMMIT),
    (ExecutionMode.AT_MOST_ONCE, FailureMode.NONE),
)
STATIC = ("s_alo_none", "s_alo_unlock", "s_alo_commit", "s_amo")
"""Static task names, in the order of :data:`MODES`."""
CRON = "* * * * * *"
DYNAMIC = "dyn"
ONEOFF = "once"

FACTORIES = {
    "sqlite": ("pyncette.sqlite", "sqlite_repository"),
    "postgres": ("pyncette.postgres", "postgres_repository"),
    "mysql": ("pyncette.mysql", "mysql_repository"),
    "redis": ("pyncette.redis", "redis_repository"),
    "redis_cluster": ("pyncette.redis", "redis_repository"),
    "dynamodb": ("pyncette.dynamodb", "dynamodb_repository"),
    "dynamodb_local": ("pyncette.dynamodb", "dynamodb_repository"),
}


class InjectedFailure(Exception):
    """Raised on purpose by the chaos task body."""


@dataclass(frozen=True)
class Workload:
    """What the processes run; the same for every process of one scenario."""

    lease: float = 3.0
    """Seconds: every task's ``lease_duration``."""
    poll: float = 0.2
    """Seconds: the app's ``poll_interval``."""
    dynamic: int = 200
    interval: float = 2.0
    """Seconds between runs of one dynamic instance."""
    oneoffs: int = 60
    fail_one_in: int = 5
    fail_within: float = 0.5
    max_run: dict[str, float] = field(
        default_factory=lambda: {"static": 0.3, DYNAMIC: 0.2, ONEOFF: 0.5}
    )
    """Each execution sleeps a uniformly random time up to this (seconds), by kind."""
    batch_size: int = 100
    concurrency_limit: int = 100

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**data)


MOTO_INSTANCES = 40
MOTO_BATCH = 10


def fitted(workload: Workload, backend: str) -> Workload:
    """``workload`` as ``backend`` can serve it. The moto DynamoDB server applies one
    request at a time (a few milliseconds each on a 2-core VM), and a DynamoDB claim or
    commit writes each row apart: 200 instances every 2 s would ask for more writes per
    second than it serves, and the runs would fall behind for good. So on DynamoDB at
    most :data:`MOTO_INSTANCES` dynamic instances, claimed :data:`MOTO_BATCH` at a time."""
    if backend != "dynamodb":
        return workload
    return dataclasses.replace(
        workload,
        dynamic=min(workload.dynamic, MOTO_INSTANCES),
        batch_size=min(workload.batch_size, MOTO_BATCH),
    )


def mode_of(index: int) -> tuple[ExecutionMode, FailureMode]:
    return MODES[index % len(MODES)]


def mode_names(mode: ExecutionMode, failure: FailureMode) -> tuple[str, str]:
    return ("amo" if mode is ExecutionMode.AT_MOST_ONCE else "alo", failure.name.lower())


def fails(template: str, instance: str, sched: int, late: float, workload: Workload) -> bool:
    """Whether this execution raises :class:`InjectedFailure` (see the module docstring)."""
    if late >= workload.fail_within:
        return False
    return zlib.crc32(f"{template}/{instance}/{sched}".encode()) % workload.fail_one_in == 0


def repository_factory(backend: str) -> RepositoryFactory:
    module, name = FACTORIES[backend]
    factory: RepositoryFactory = getattr(importlib.import_module(module), name)
    return factory


# -- the logging repository ---------------------------------------------------------------


class LoggingRepository(RepositoryProxy):
    """Logs every lease operation (see :mod:`chaos.log`) around the real repository."""

    def __init__(self, inner: Repository, log: ExecLog) -> None:
        super().__init__(inner)
        self.log = log
        self._ready = False
        self._seq = 0

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        self._seq += 1
        seq = self._seq
        t0 = time.time()
        base = {"s": seq, "g": group, "lease": lease, "now": to_epoch_us(now), "t0": t0}
        # the intent: a process killed while its claim is in flight may hold rows
        self.log.write({"e": "claim_sent"} | base)
        try:
            result = await self.inner.claim(group, now=now, limit=limit, lease=lease)
        except BaseException as error:
            self.log.write(
                {"e": "claim_err"} | base | {"t1": time.time(), "err": type(error).__name__}
            )
            raise
        t1 = time.time()
        if result.records:
            rows = [
                [
                    r.name,
                    to_epoch_us(r.scheduled_at),
                    to_epoch_us(r.locked_until) if r.locked_until else None,
                ]
                for r in result.records
            ]
            self.log.write({"e": "claim"} | base | {"t1": t1, "rows": rows})
        else:
            self.log.write({"e": "claim_none", "s": seq, "t1": t1})
        if not self._ready:
            self._ready = True
            self.log.write({"e": "ready", "t": t1})
        return result

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        self._seq += 1
        seq = self._seq
        items = [[c.name, c.lease, to_epoch_us(c.next_at) if c.next_at else None] for c in commits]
        self.log.write({"e": "commit", "s": seq, "g": group, "t0": time.time(), "items": items})
        try:
            lost = await self.inner.commit(group, commits, now=now)
        except BaseException as error:
            self.log.write(
                {"e": "commit_err", "s": seq, "t1": time.time(), "err": type(error).__name__}
            )
            raise
        self.log.write({"e": "committed", "s": seq, "t1": time.time(), "lost": list(lost)})
        return lost

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        rows = [[r.name, to_epoch_us(r.scheduled_at)] for r in registrations]
        base = {"e": "register", "g": group, "now": to_epoch_us(now), "force": force, "rows": rows}
        t0 = time.time()
        try:
            left = await self.inner.register(group, registrations, now=now, force=force)
        except BaseException as error:
            self.log.write(base | {"t0": t0, "t1": time.time(), "err": type(error).__name__})
            raise
        self.log.write(base | {"t0": t0, "t1": time.time(), "left": list(left)})
        return left

    async def _guarded(
        self, kind: str, group: str, name: str, lease: Lease, call: Awaitable[bool], **extra: Any
    ) -> bool:
        """Log the intent (``kind``), then the answer (``<kind>_done``), like commits: a
        process killed while the call is in flight leaves the intent behind."""
        self._seq += 1
        seq = self._seq
        intent = {"e": kind, "s": seq, "g": group, "n": name, "lease": lease, **extra}
        self.log.write(intent | {"t0": time.time()})
        try:
            ok = await call
        except BaseException as error:
            self.log.write(
                {"e": f"{kind}_done", "s": seq, "t1": time.time(), "ok": None}
                | {"err": type(error).__name__}
            )
            raise
        self.log.write({"e": f"{kind}_done", "s": seq, "t1": time.time(), "ok": ok})
        return ok

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        call = self.inner.extend(group, name, lease, locked_until=locked_until)
        return await self._guarded(
            "extend", group, name, lease, call, until=to_epoch_us(locked_until)
        )

    async def unlock(
        self,
        group: str,
        name: str,
        lease: Lease,
        *,
        outcome: str | None = None,
        history: History | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        call = self.inner.unlock(group, name, lease, outcome=outcome, history=history, now=now)
        return await self._guarded("unlock", group, name, lease, call)


def logging_factory(factory: RepositoryFactory, log: ExecLog) -> RepositoryFactory:
    @contextlib.asynccontextmanager
    async def open_repository(**options: Any) -> AsyncIterator[Repository]:
        async with factory(**options) as repository:
            yield LoggingRepository(repository, log)

    return open_repository


# -- the app ------------------------------------------------------------------------------


def make_body(log: ExecLog | None, workload: Workload, rng: random.Random) -> TaskFunc:
    async def body(context: Context) -> None:
        if log is None:
            raise RuntimeError("set-up and inspection apps never execute")
        task = context.task
        template = task.template.name
        sched = to_epoch_us(context.scheduled_at)
        mode, failure = mode_names(task.execution_mode, task.failure_mode)
        base = {"task": template, "inst": task.name, "sched": sched, "lease": context.lease}
        base |= {"mode": mode, "fm": failure}
        started = time.time()
        log.write({"e": "start", "t": started} | base)
        kind = "static" if not task.is_instance else template
        await asyncio.sleep(rng.uniform(0, workload.max_run[kind]))
        failed = fails(template, task.name, sched, started - sched / 1e6, workload)
        log.write({"e": "end", "t": time.time(), "ok": not failed} | base)
        if failed:
            raise InjectedFailure(f"{template}/{task.name} at {context.scheduled_at}")

    return body


@dataclass
class ChaosApp:
    app: Pyncette
    dynamic: Task
    oneoff: Task
    static: list[Task]


def build_app(
    backend: str,
    options: dict[str, Any],
    workload: Workload,
    *,
    log: ExecLog | None = None,
    static_enabled: bool = True,
    seed: int | None = None,
) -> ChaosApp:
    """The chaos app on ``backend``. With ``log`` it logs lease operations and
    executions; without, it is for set-up and inspection only (never run)."""
    factory = repository_factory(backend)
    if log is not None:
        factory = logging_factory(factory, log)
    app = Pyncette(
        repository_factory=factory,
        poll_interval=datetime.timedelta(seconds=workload.poll),
        batch_size=workload.batch_size,
        concurrency_limit=workload.concurrency_limit,
        **options,
    )
    body = make_body(log, workload, random.Random(seed))
    lease = datetime.timedelta(seconds=workload.lease)
    static = [
        app.task(
            name=name,
            schedule=CRON,
            execution_mode=mode,
            failure_mode=failure,
            lease_duration=lease,
            enabled=static_enabled,
        )(body)
        for name, (mode, failure) in zip(STATIC, MODES, strict=True)
    ]
    dynamic = app.dynamic_task(
        name=DYNAMIC, interval=datetime.timedelta(seconds=workload.interval), lease_duration=lease
    )(body)
    oneoff = app.dynamic_task(name=ONEOFF, lease_duration=lease)(body)
    return ChaosApp(app, dynamic, oneoff, static)


# -- set-up and final state ---------------------------------------------------------------


@dataclass
class Plan:
    """What set-up stored: the first run of everything, and every run's modes."""

    set_up_at: float
    interval_us: int
    static: dict[str, int]
    dynamic: dict[str, int]
    oneoffs: dict[str, int]
    modes: dict[str, tuple[str, str]]
    """``"<task>/<instance>"`` -> ``(mode, failure mode)``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def dynamic_name(index: int) -> str:
    return f"{DYNAMIC}-{index:04d}"


def oneoff_name(index: int) -> str:
    return f"{ONEOFF}-{index:04d}"


def _spec(index: int) -> dict[str, Any]:
    mode, failure = mode_of(index)
    return {"execution_mode": mode, "failure_mode": failure}


async def _all(ctx: Any, template: Task) -> dict[str, Any]:
    states: dict[str, Any] = {}
    token = None
    while True:
        page = await ctx.list_tasks(template, limit=100, continuation_token=token)
        for state in page:
            states[state.task.name] = state
        token = page.continuation_token
        if token is None:
            return states


async def set_up(
    backend: str,
    options: dict[str, Any],
    workload: Workload,
    oneoffs_from: float,
    oneoffs_until: float,
    seed: int,
) -> Plan:
    """Create the table, the static rows and every instance; return the plan."""
    chaos = build_app(backend, options, workload)
    rng = random.Random(seed)
    started = time.time()
    async with chaos.app.create() as ctx:
        await ctx.schedule_tasks(
            chaos.dynamic, {dynamic_name(i): _spec(i) for i in range(workload.dynamic)}
        )
        oneoffs = {}
        for i in range(workload.oneoffs):
            at = datetime.datetime.fromtimestamp(
                rng.uniform(oneoffs_from, oneoffs_until), tz=datetime.UTC
            )
            oneoffs[oneoff_name(i)] = {"execute_at": at, **_spec(i)}
        await ctx.schedule_tasks(chaos.oneoff, oneoffs)
        static = {}
        for task in chaos.static:
            state = await ctx.get_task(task)
            assert state is not None, f"static task {task.name} was not stored"
            static[task.name] = to_epoch_us(state.scheduled_at)
        dynamic = {
            name: to_epoch_us(s.scheduled_at)
            for name, s in (await _all(ctx, chaos.dynamic)).items()
        }
        stored_oneoffs = {
            name: to_epoch_us(s.scheduled_at) for name, s in (await _all(ctx, chaos.oneoff)).items()
        }
    modes: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(STATIC):
        modes[f"{name}/{name}"] = mode_names(*MODES[i])
    for i in range(workload.dynamic):
        modes[f"{DYNAMIC}/{dynamic_name(i)}"] = mode_names(*mode_of(i))
    for i in range(workload.oneoffs):
        modes[f"{ONEOFF}/{oneoff_name(i)}"] = mode_names(*mode_of(i))
    return Plan(
        set_up_at=started,
        interval_us=round(workload.interval * 1e6),
        static=static,
        dynamic=dynamic,
        oneoffs=stored_oneoffs,
        modes=modes,
    )


@dataclass
class StoredRow:
    sched: int
    locked_until: int | None


@dataclass
class FinalState:
    static: dict[str, StoredRow | None]
    dynamic: dict[str, StoredRow]
    oneoffs: dict[str, StoredRow]
    read_at: float


def _row(state: Any) -> StoredRow:
    until = state.locked_until
    return StoredRow(
        to_epoch_us(state.scheduled_at), to_epoch_us(until) if until is not None else None
    )


async def final_state(backend: str, options: dict[str, Any], workload: Workload) -> FinalState:
    """Read every row through the public API (static tasks disabled: nothing is written)."""
    chaos = build_app(backend, options, workload, static_enabled=False)
    async with chaos.app.create() as ctx:
        static: dict[str, StoredRow | None] = {}
        for task in chaos.static:
            state = await ctx.get_task(task)
            static[task.name] = _row(state) if state is not None else None
        dynamic = {name: _row(s) for name, s in (await _all(ctx, chaos.dynamic)).items()}
        oneoffs = {name: _row(s) for name, s in (await _all(ctx, chaos.oneoff)).items()}
    return FinalState(static, dynamic, oneoffs, time.time())
