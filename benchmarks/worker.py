"""One benchmark process: ``python worker.py CONFIG.json``.

This file is run as a script, under this project's venv or under Pyncette 1.1.0's
(``--compare``), so it imports nothing from the ``benchmarks`` package and, unless the
config sets ``"api": "bulk"``, uses only the public Pyncette 1.x API. It prints one line,
``RESULT {json}``, on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import importlib
import json
import logging
import random
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pyncette import Pyncette

UTC = datetime.UTC
CHUNK = 100
"""How many ``schedule_task`` calls run concurrently in the 1.x-compatible setup path."""

FACTORIES = {
    "sqlite": ("pyncette.sqlite", "sqlite_repository"),
    "postgres": ("pyncette.postgres", "postgres_repository"),
    "mysql": ("pyncette.mysql", "mysql_repository"),
    "redis": ("pyncette.redis", "redis_repository"),
    # the same factory: it asks the node in redis_url and picks the cluster client
    "redis_cluster": ("pyncette.redis", "redis_repository"),
    "dynamodb": ("pyncette.dynamodb", "dynamodb_repository"),
    "dynamodb_local": ("pyncette.dynamodb", "dynamodb_repository"),
}


TALLY: Any = None
"""This project's runs with ``"count": true``: the ``counting.Tally`` the app's repository
(wrapped in ``counting.CountingRepository``) and its driver count into."""


def make_app(config: dict[str, Any]) -> Pyncette:
    global TALLY
    kwargs: dict[str, Any] = dict(config.get("options", {}))
    backend = config["backend"]
    if config.get("count"):
        try:  # counting needs this layout's hooks
            import counting  # benchmarks/counting.py, beside this script
            from pyncette.app import default_repository_factory
        except ImportError:  # an older commit of this project, on PYTHONPATH for an A/B
            config["count"] = False
    if backend in FACTORIES:
        module, name = FACTORIES[backend]
        kwargs["repository_factory"] = getattr(importlib.import_module(module), name)
    elif backend == "memory":
        if config.get("count"):
            from pyncette.app import default_repository_factory

            kwargs["repository_factory"] = default_repository_factory
    elif backend == "null":
        kwargs["repository_factory"] = null_repository
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    if config.get("count"):
        import counting  # benchmarks/counting.py, beside this script

        TALLY = counting.Tally()
        kwargs["repository_factory"] = counting.counting_factory(
            kwargs["repository_factory"], TALLY
        )
    # Both packages accept these: ours as named parameters, 1.x through **kwargs.
    kwargs["batch_size"] = config.get("batch_size", 100)
    kwargs["concurrency_limit"] = config.get("concurrency_limit", 100)
    kwargs["poll_interval"] = datetime.timedelta(seconds=config.get("poll_interval", 1.0))
    if config.get("instant_wakeups"):  # ours only: 1.x has no such option
        kwargs["instant_wakeups"] = True
    if config.get("run_history"):  # ours only
        kwargs["run_history"] = config["run_history"]
    return Pyncette(**kwargs)


@contextlib.asynccontextmanager
async def null_repository(**options: Any) -> Any:
    """``--backend null``, the scheduler alone: a repository that hands out the rows set-up
    registered, a batch per claim, each with the claim's lease, and stores no commit (this
    project only; its cost per call is a list pop and a ``Record`` per row). The drain's
    executions per second through it are what the scheduler itself sustains."""
    from pyncette.memory import InMemoryRepository
    from pyncette.repository import ClaimResult, Record

    class Prepared(InMemoryRepository):
        def __init__(self) -> None:
            super().__init__()
            self._prepared: dict[str, list[Any]] = {}

        async def claim(
            self, group: str, *, now: datetime.datetime, limit: int, lease: Any
        ) -> ClaimResult:
            if group not in self._groups or group.startswith("__"):
                return await super().claim(group, now=now, limit=limit, lease=lease)
            rows = self._prepared.get(group)
            if rows is None:
                rows = self._prepared[group] = list(self._groups[group].rows.values())
            taken = rows[-limit:]
            del rows[-limit:]
            records = [
                Record(row.name, row.spec, row.scheduled_at, now + row.lease_duration, lease)
                for row in taken
            ]
            return ClaimResult(records, None)

        async def commit(self, group: str, commits: Any, *, now: datetime.datetime) -> list[str]:
            if group not in self._prepared:
                return await super().commit(group, commits, now=now)
            return []

    yield Prepared()


def settle_heap() -> None:
    """What ``app.main()`` does once set-up is done, applied to both packages alike: keep
    long-lived start-up objects out of the garbage collector's full passes."""
    gc.collect()
    gc.freeze()


def use_bulk(config: dict[str, Any], ctx: Any) -> bool:
    return config.get("api") == "bulk" and hasattr(ctx, "schedule_tasks")


async def schedule_many(
    config: dict[str, Any], ctx: Any, task: Any, specs: dict[str, dict[str, Any]]
) -> None:
    """Register instances: the bulk call where allowed, else 1.x ``schedule_task`` calls
    gathered in chunks."""
    if use_bulk(config, ctx):
        await ctx.schedule_tasks(task, specs)
        return
    items = list(specs.items())
    for start in range(0, len(items), CHUNK):
        await asyncio.gather(
            *(ctx.schedule_task(task, name, **spec) for name, spec in items[start : start + CHUNK])
        )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(count)]


async def wait_until(epoch: float | None) -> None:
    if epoch is not None:
        await asyncio.sleep(max(0.0, epoch - time.time()))


PROFILES: list[tuple[str, str]] = []
"""(path, text) of profiles taken, written out once the event loop has stopped."""


class Window:
    """This process's CPU time, and (this project's runs with ``"count": true``)
    counted requests and server CPU, between :meth:`open` and :meth:`close`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.start: Any = None
        self.cpu_start: Any = None
        self.client_start = 0.0
        self.result: dict[str, Any] = {}

    async def sample_cpu(self) -> Any:
        if not self.config.get("server_cpu"):
            return None
        import servercpu  # benchmarks/servercpu.py, beside this script

        try:
            config = self.config
            return await servercpu.sample(
                config["backend"], config.get("options", {}), config.get("server_pid")
            )
        except Exception as exc:  # a measurement aid: never fail the run over it
            print(f"server CPU sample failed: {exc!r}", file=sys.stderr)
            return None

    async def open(self) -> None:
        # Sample the server first: its requests (INFO on Redis, through the same patched
        # driver) must not count as the app's round trips, nor its CPU as the client's.
        self.cpu_start = await self.sample_cpu()
        self.client_start = time.process_time()
        if TALLY is not None:
            self.start = TALLY.snapshot()

    async def close(self) -> None:
        self.result["client_cpu_s"] = time.process_time() - self.client_start
        if TALLY is not None and self.start is not None:
            self.result["tally"] = TALLY.since(self.start)
        if self.cpu_start is not None:
            import servercpu

            end = await self.sample_cpu()
            if end is not None:
                self.result["server_cpu"] = servercpu.server_cpu(self.cpu_start, end)

    def report(self, executions: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if executions and "client_cpu_s" in self.result:
            out["client_cpu_us"] = self.result["client_cpu_s"] * 1e6 / executions
        if "tally" in self.result:
            out["counts"] = self.result["tally"].summary(executions)
        if "server_cpu" in self.result:
            cpu = self.result["server_cpu"]
            out["server_cpu"] = {
                **cpu,
                "process_us_per_execution": (
                    cpu["process_s"] * 1e6 / executions
                    if executions and cpu["process_s"] is not None
                    else None
                ),
                "commands_us_per_execution": (
                    cpu["commands_s"] * 1e6 / executions
                    if executions and cpu["commands_s"] is not None
                    else None
                ),
            }
        return out


def top_entries(session: Any, count: int = 12) -> list[dict[str, Any]]:
    """The functions with the most self time in a pyinstrument session (where the CPU
    went, summed over every call path), with their share of the profiled time."""
    root = session.root_frame()
    if root is None:
        return []
    selfs: dict[str, float] = {}
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        frame, parent = stack.pop()
        # pyinstrument puts a function's own time in a synthetic "[self]" child
        synthetic = frame.is_synthetic
        where = (
            parent if synthetic else f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        )
        children = list(frame.children)
        stack.extend((child, where) for child in children)
        own = frame.time - sum(child.time for child in children)
        selfs[where] = selfs.get(where, 0.0) + max(own, 0.0)
    total = root.time or 1.0
    ranked = sorted(selfs.items(), key=lambda item: -item[1])[:count]
    return [{"where": where, "self_s": s, "share": s / total} for where, s in ranked]


PROFILE_TOP: list[dict[str, Any]] = []


class Profiled:
    """Runs a coroutine under pyinstrument when the config asks for a profile."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.path = config.get("profile")

    async def run(self, operation: Callable[[], Awaitable[None]]) -> None:
        if not self.path:
            await operation()
            return
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled", interval=0.0005)
        profiler.start()
        try:
            await operation()
        finally:
            profiler.stop()
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            PROFILES.append((self.path, text))
            if profiler.last_session is not None:
                PROFILE_TOP[:] = top_entries(profiler.last_session)


# -- scenarios --------------------------------------------------------------------------


async def drain(config: dict[str, Any]) -> dict[str, Any]:
    """Execute ``n`` one-off instances that are all due; stop when all ran (one process)
    or when idle for ``idle_exit`` seconds (several processes sharing a store)."""
    n = config["n"]
    app = make_app(config)
    seen: list[str] = []
    stamps: list[float] = []
    dues: list[datetime.datetime] = []  # converted once the run is over
    idle_exit = config.get("idle_exit")
    holder: dict[str, Any] = {}
    window = Window(config)
    job_sleep = config.get("job_sleep")

    @app.dynamic_task(name="bench_drain")
    async def bench_drain(context: Any) -> None:
        if job_sleep is not None:  # a job that waits for something, as most do
            await asyncio.sleep(job_sleep)
        stamps.append(time.time())
        seen.append(context.task.name)
        dues.append(context.scheduled_at)
        if idle_exit is None and len(seen) >= n:
            holder["ctx"].shutdown()

    result: dict[str, Any] = {}
    async with app.create() as ctx:
        settle_heap()
        holder["ctx"] = ctx
        if config.get("setup", True):
            due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
            started = time.perf_counter()
            await schedule_many(
                config, ctx, bench_drain, {name: {"execute_at": due} for name in names("d", n)}
            )
            result["setup_s"] = time.perf_counter() - started
        await wait_until(config.get("start_at"))
        await window.open()
        run_started = time.time()

        async def watchdog() -> None:
            deadline = run_started + config.get("timeout", 600)
            while time.time() < deadline:
                await asyncio.sleep(0.1)
                if idle_exit is not None:
                    last = stamps[-1] if stamps else run_started + config.get("first_wait", 10.0)
                    if time.time() - last > idle_exit:
                        break
            ctx.shutdown()

        guard = asyncio.ensure_future(watchdog())
        await Profiled(config).run(ctx.run)
        guard.cancel()
        await window.close()
    counts: dict[str, int] = {}
    for name in seen:
        counts[name] = counts.get(name, 0) + 1
    result.update(
        executions=len(seen),
        unique=len(counts),
        duplicates=len(seen) - len(counts),
        first=min(stamps) if stamps else None,
        last=max(stamps) if stamps else None,
        run_started=run_started,
        peak_rss_mib=peak_rss_mib(),
        **window.report(len(seen)),
    )
    if config.get("out"):
        result["_log"] = [
            [name, due.timestamp(), stamp]
            for name, due, stamp in zip(seen, dues, stamps, strict=True)
        ]
        result["_names"] = seen
    return result


async def setup_only(config: dict[str, Any]) -> dict[str, Any]:
    """Register the drain scenario's instances and exit (for multi-process runs)."""
    app = make_app(config)

    @app.dynamic_task(name="bench_drain")
    async def bench_drain(context: Any) -> None:  # never runs here
        pass

    async with app.create() as ctx:
        settle_heap()
        due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
        started = time.perf_counter()
        await schedule_many(
            config,
            ctx,
            bench_drain,
            {name: {"execute_at": due} for name in names("d", config["n"])},
        )
        return {"setup_s": time.perf_counter() - started}


async def steady(config: dict[str, Any]) -> dict[str, Any]:
    """``n`` interval instances every ``interval`` seconds, run for ``duration`` seconds."""
    n, interval, duration = config["n"], config["interval"], config["duration"]
    app = make_app(config)
    started_at: list[float] = []
    due_at: list[float] = []
    ran: list[str] = []
    window = Window(config)

    @app.dynamic_task(name="bench_steady")
    async def bench_steady(context: Any) -> None:
        started_at.append(time.time())
        due_at.append(context.scheduled_at.timestamp())
        ran.append(context.task.name)

    async with app.create() as ctx:
        settle_heap()
        period = datetime.timedelta(seconds=interval)
        waves = max(1, int(config.get("waves", 10)))
        everyone = names("s", n)
        await wait_until(config.get("start_at"))  # several processes start together
        running = asyncio.ensure_future(Profiled(config).run(ctx.run))
        setup_started = time.perf_counter()
        # Instances are added in waves across one interval, as users arrive over time, so
        # their runs are spread over the interval instead of all falling due at once.
        for wave in range(waves):
            if config.get("setup", True):
                await schedule_many(
                    config,
                    ctx,
                    bench_steady,
                    {name: {"interval": period} for name in everyone[wave::waves]},
                )
            await asyncio.sleep(interval / waves)
        setup_s = time.perf_counter() - setup_started
        run_started = time.time()
        # requests and server CPU are counted over the measured window only
        await asyncio.sleep(interval)
        await window.open()
        await asyncio.sleep(max(0.0, run_started + duration - time.time()))
        await window.close()
        ctx.shutdown()
        await running
    window_start, window_end = run_started + interval, run_started + duration
    lateness = sorted(
        (start - due) * 1000
        for start, due in zip(started_at, due_at, strict=True)
        if window_start <= due and start <= window_end
    )
    in_window = sum(1 for start in started_at if window_start <= start <= window_end)
    log = None
    if config.get("out"):
        log = [list(row) for row in zip(ran, due_at, started_at, strict=True)]
    return {
        **window.report(in_window),
        "_log": log,
        "setup_s": setup_s,
        "executions": len(started_at),
        "demanded_per_s": n / interval,
        "achieved_per_s": in_window / (window_end - window_start),
        "lateness_ms": {
            "count": len(lateness),
            "p50": percentile(lateness, 0.50),
            "p99": percentile(lateness, 0.99),
            "max": lateness[-1] if lateness else None,
        },
        "peak_rss_mib": peak_rss_mib(),
    }


async def wakeup_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Poll (and listen, with ``instant_wakeups``) for ``duration`` seconds, logging each
    execution of ``bench_wake`` as ``[name, scheduled_at, start]`` (epoch seconds)."""
    app = make_app(config)
    log: list[list[Any]] = []

    @app.dynamic_task(name="bench_wake")
    async def bench_wake(context: Any) -> None:
        log.append([context.task.name, context.scheduled_at.timestamp(), time.time()])

    async with app.create() as ctx:
        running = asyncio.ensure_future(ctx.run())
        await asyncio.sleep(max(0.0, config["start_at"] + config["duration"] - time.time()))
        ctx.shutdown()
        await running
    return {"_log": log, "executions": len(log)}


async def wakeup_source(config: dict[str, Any]) -> dict[str, Any]:
    """From ``start_at``, schedule ``n`` one-off ``bench_wake`` instances due at once,
    one every 0.1-0.3 s (seeded), through an app that runs no poll loop."""
    app = make_app(config)

    @app.dynamic_task(name="bench_wake")
    async def bench_wake(context: Any) -> None:  # never runs here
        pass

    pause = random.Random(config.get("seed", 0))
    async with app.create() as ctx:
        await wait_until(config["start_at"])
        for index in range(config["n"]):
            now = datetime.datetime.now(UTC)
            await ctx.schedule_task(bench_wake, f"w{index}", execute_at=now)
            await asyncio.sleep(pause.uniform(0.1, 0.3))
    return {"scheduled": config["n"]}


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def register(config: dict[str, Any]) -> dict[str, Any]:
    """Rate of ``schedule_task`` one by one, gathered in chunks, and in bulk."""
    n = config["n"]
    app = make_app(config)

    @app.dynamic_task(name="bench_register")
    async def bench_register(context: Any) -> None:  # never runs: due in a day
        pass

    later = datetime.datetime.now(UTC) + datetime.timedelta(days=1)
    rates: dict[str, float] = {}
    async with app.create() as ctx:
        settle_heap()
        started = time.perf_counter()
        for name in names("q", n):
            await ctx.schedule_task(bench_register, name, execute_at=later)
        rates["sequential"] = n / (time.perf_counter() - started)

        batch = names("g", n)
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await asyncio.gather(
                *(
                    ctx.schedule_task(bench_register, name, execute_at=later)
                    for name in batch[start : start + CHUNK]
                )
            )
        rates["gathered"] = n / (time.perf_counter() - started)

        if hasattr(ctx, "schedule_tasks") and config.get("api") == "bulk":
            specs = {name: {"execute_at": later} for name in names("b", n)}
            started = time.perf_counter()
            await ctx.schedule_tasks(bench_register, specs)
            rates["bulk"] = n / (time.perf_counter() - started)
    return {"rates": rates, "peak_rss_mib": peak_rss_mib()}


async def scale(config: dict[str, Any]) -> dict[str, Any]:
    """Claim cost with ``due`` due instances among ``stored`` stored ones (this project
    only: rows are written straight through the repository to set up quickly)."""
    from pyncette.repository import Registration

    stored, due = config["stored"], config["due"]
    app = make_app(config)
    seen: list[str] = []
    holder: dict[str, Any] = {}

    @app.dynamic_task(name="bench_scale")
    async def bench_scale(context: Any) -> None:
        seen.append(context.task.name)
        if len(seen) >= due:
            holder["ctx"].shutdown()

    claims: list[float] = []
    async with app.create() as ctx:
        settle_heap()
        holder["ctx"] = ctx
        repository = ctx._repository
        now = datetime.datetime.now(UTC)
        later = now + datetime.timedelta(days=1)
        past = now - datetime.timedelta(seconds=1)
        future_spec = bench_scale.make_instance("x", {"execute_at": later}).spec()
        due_spec = bench_scale.make_instance("x", {"execute_at": past}).spec()
        lease = bench_scale.lease_duration
        setup_started = time.perf_counter()
        chunk = config.get("setup_chunk", 1000)
        future = stored - due
        for start in range(0, future, chunk):
            regs = [
                Registration(f"f{i:08d}", future_spec, later, lease)
                for i in range(start, min(future, start + chunk))
            ]
            await repository.register("bench_scale", regs, now=now, force=False)
        regs = [Registration(f"d{i:08d}", due_spec, past, lease) for i in range(due)]
        for start in range(0, due, chunk):
            await repository.register(
                "bench_scale", regs[start : start + chunk], now=now, force=False
            )
        setup_s = time.perf_counter() - setup_started

        claim = repository.claim

        async def timed_claim(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await claim(*args, **kwargs)
            finally:
                claims.append((time.perf_counter() - started) * 1000)

        repository.claim = timed_claim
        run_started = time.perf_counter()
        asyncio.get_running_loop().call_later(config.get("timeout", 600), ctx.shutdown)
        await ctx.run()
        drain_s = time.perf_counter() - run_started
    ordered = sorted(claims[:-1] if len(claims) > 1 else claims)  # last claim finds nothing
    return {
        "setup_s": setup_s,
        "executions": len(seen),
        "drain_s": drain_s,
        "claims": len(claims),
        "claim_ms": {
            "p50": percentile(ordered, 0.5),
            "max": ordered[-1] if ordered else None,
            "sum": sum(ordered),
        },
        "peak_rss_mib": peak_rss_mib(),
    }


async def repository_drain(config: dict[str, Any]) -> dict[str, Any]:
    """The drain's claims and commits through this project's repository alone, with no
    scheduler: on the store ``setup`` filled, claim ``batch_size`` due rows and commit
    them as done (delete), until the group is empty. It sits between the plain driver's
    ceiling (``ceiling.py``) and the full drain, so the gap splits into the repository's
    share and the scheduler's."""
    from pyncette.model import Lease
    from pyncette.repository import Commit

    module, name = FACTORIES[config["backend"]]
    factory = getattr(importlib.import_module(module), name)
    limit = config.get("batch_size", 100)
    executions = requests = 0
    async with factory(**config.get("options", {})) as repository:
        started = time.perf_counter()
        cpu = time.process_time()
        while True:
            lease = Lease(uuid.uuid4().hex)
            now = datetime.datetime.now(UTC)
            claimed = await repository.claim("bench_drain", now=now, limit=limit, lease=lease)
            requests += 1
            if not claimed.records:
                break
            done = [Commit(record.name, lease, None) for record in claimed.records]
            lost = await repository.commit("bench_drain", done, now=now)
            requests += 1
            executions += len(done) - len(lost)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {
        "executions": executions,
        "requests": requests,
        "elapsed_s": elapsed,
        "rate": executions / elapsed if elapsed else None,
        "requests_per_execution": requests / executions if executions else None,
        "client_cpu_us": cpu / executions * 1e6 if executions else None,
    }


SCENARIOS = {
    "drain": drain,
    "setup": setup_only,
    "repository_drain": repository_drain,
    "steady": steady,
    "register": register,
    "scale": scale,
    "wakeup_worker": wakeup_worker,
    "wakeup_source": wakeup_source,
}


def main() -> None:
    with open(sys.argv[1]) as source:
        config = json.load(source)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(SCENARIOS[config["scenario"]](config))
    for path, text in PROFILES:
        with open(path, "w") as out:
            out.write(text)
    if PROFILE_TOP:
        result["profile_top"] = PROFILE_TOP
    log = result.pop("_log", None)
    if "_names" in result or log is not None:
        with open(config["out"], "w") as out:
            names = result.pop("_names", None)
            json.dump(
                {
                    "names": names,
                    "log": log,
                    "first": result.get("first"),
                    "last": result.get("last"),
                },
                out,
            )
    result["run_id"] = config.get("run_id") or uuid.uuid4().hex
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
