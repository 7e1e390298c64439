"""Dynamic and partitioned tasks, one-off tasks and instance management. Every backend."""

from __future__ import annotations

import asyncio
import datetime
import hashlib

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, counters, make_app, running
from pyncette import Context, ExecutionMode
from pyncette.errors import LeaseLostException, TaskLockedException
from pyncette.task import default_partition_selector

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


async def test_dynamic_instances_run_with_their_own_schedule_and_args(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[tuple[str, str, datetime.datetime]] = []

    @app.dynamic_task()
    async def hello(context: Context) -> None:
        seen.append((context.task.name, context.args["username"], context.scheduled_at))

    async with running(app) as ctx:
        bill = await ctx.schedule_task(hello, "bill", interval=10 * S, username="bill")
        await ctx.schedule_task(hello, "steve", schedule="* * * * *", username="steve")
        assert bill.name == "bill" and bill.parent_task is hello
        await clock.advance(60)
    assert sorted(seen) == sorted(
        [("bill", "bill", T0 + i * 10 * S) for i in range(1, 7)] + [("steve", "steve", T0 + 60 * S)]
    )


async def test_execute_at_runs_once_then_is_gone(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[tuple[str, datetime.datetime]] = []

    @app.dynamic_task()
    async def once(context: Context) -> None:
        seen.append((context.task.name, clock.now()))

    async with running(app) as ctx:
        await ctx.schedule_task(once, "overdue", execute_at=T0 - datetime.timedelta(days=1))
        await ctx.schedule_task(once, "later", execute_at=T0 + 30 * S)
        await clock.advance(1)
        assert seen == [("overdue", T0)]
        assert await ctx.get_task(once, "overdue") is None
        state = await ctx.get_task(once, "later")
        assert state is not None and state.scheduled_at == T0 + 30 * S
        await clock.advance(100)
    assert seen == [("overdue", T0), ("later", T0 + 30 * S)]


async def test_schedule_task_update_keeps_the_sooner_run(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[tuple[datetime.datetime, object]] = []

    @app.dynamic_task()
    async def job(context: Context) -> None:
        seen.append((context.scheduled_at, context.args.get("v")))

    async with running(app) as ctx:
        await ctx.schedule_task(job, "x", interval=100 * S, v=1)
        for i in range(3):  # repeated updates cannot postpone the run
            await clock.advance(25)
            await ctx.schedule_task(job, "x", interval=100 * S, v=2 + i)
        state = await ctx.get_task(job, "x")
        assert state is not None
        assert state.scheduled_at == T0 + 100 * S
        assert state.task.args == {"v": 4}
        await clock.advance(25)  # runs at 100; next at 200
        await ctx.schedule_task(job, "x", interval=5 * S, v=5)  # sooner: moves up to 105
        state = await ctx.get_task(job, "x")
        assert state is not None and state.scheduled_at == T0 + 105 * S
        await clock.advance(5)
    assert seen == [(T0 + 100 * S, 4), (T0 + 105 * S, 5)]


async def test_schedule_task_while_running_is_locked_unless_forced(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    started = asyncio.Event()
    outcome: list[str] = []

    @app.dynamic_task()
    async def long(context: Context) -> None:
        started.set()
        await clock.sleep(20)
        try:
            await context.heartbeat()
        except LeaseLostException:
            outcome.append("lease lost")
            raise

    async with running(app) as ctx:
        await ctx.schedule_task(long, "x", interval=100 * S)
        await clock.advance(100)
        assert started.is_set()
        state = await ctx.get_task(long, "x")
        assert state is not None and state.locked_by is not None
        assert state.locked_until == T0 + 160 * S
        with pytest.raises(TaskLockedException):
            await ctx.schedule_task(long, "x", interval=50 * S)
        state = await ctx.get_task(long, "x")
        assert state is not None and state.task.interval == 100 * S
        await ctx.schedule_task(long, "x", interval=50 * S, force=True)
        state = await ctx.get_task(long, "x")
        assert state is not None and state.locked_by is None and state.task.interval == 50 * S
        await clock.advance(20)
    assert outcome == ["lease lost"]


async def test_unschedule_stops_future_runs_and_fails_heartbeats(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[str] = []
    errors: list[str] = []

    @app.dynamic_task()
    async def job(context: Context) -> None:
        runs.append(context.task.name)
        if context.task.name == "beating":
            await context.app_context.unschedule_task(context.task)
            try:
                await context.heartbeat()
            except LeaseLostException:
                errors.append("lost")

    async with running(app) as ctx:
        await ctx.schedule_task(job, "plain", interval=10 * S)
        await ctx.schedule_task(job, "beating", interval=10 * S)
        await clock.advance(10)
        await ctx.unschedule_task(job, "plain")
        await ctx.unschedule_task(job, "never-existed")
        await clock.advance(50)
        assert await ctx.get_task(job, "plain") is None
    assert sorted(runs) == ["beating", "plain"]
    assert errors == ["lost"]


async def test_list_tasks_pages_with_continuation_tokens(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.dynamic_task()
    async def plain(context: Context) -> None: ...

    @app.partitioned_task(partition_count=4)
    async def parted(context: Context) -> None: ...

    @app.task(interval=S)
    async def static(context: Context) -> None: ...

    async with app.create() as ctx:
        for template in (plain, parted):
            names = [f"user-{i:02d}" for i in range(11)]
            await ctx.schedule_tasks(
                template, {n: {"interval": 60 * S, "i": i} for i, n in enumerate(names)}
            )
            seen: list[str] = []
            token = None
            for _ in range(20):
                page = await ctx.list_tasks(template, limit=3, continuation_token=token)
                assert len(page) <= 3
                seen.extend(state.task.name for state in page)
                assert all(state.task.args["i"] == int(state.task.name[-2:]) for state in page)
                token = page.continuation_token
                if token is None:
                    break
            assert sorted(seen) == names
            everything = await ctx.list_tasks(template, limit=100)
            assert len(everything) == 11 and everything.continuation_token is None
        with pytest.raises(ValueError, match="dynamic"):
            await ctx.list_tasks(static)
        with pytest.raises(ValueError, match="continuation token"):
            await ctx.list_tasks(plain, continuation_token="garbage")  # type: ignore[arg-type]


def test_default_partition_selector_matches_pyncette() -> None:
    for count in (1, 4, 32, 1000):
        for name in ("bill", "steve_task", "ünï", ""):
            digest = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
            assert default_partition_selector(count, name) == digest * count // 2**160
    # fixed values, so an accidental change of the formula is caught
    assert [default_partition_selector(32, n) for n in ("bill", "steve", "john")] == [
        int(hashlib.sha1(n.encode()).hexdigest(), 16) * 32 // 2**160
        for n in ("bill", "steve", "john")
    ]


async def test_partitioned_task_spreads_instances_and_polls_enabled_partitions(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[str] = []

    @app.partitioned_task(partition_count=4, enabled_partitions=[0, 1])
    async def parted(context: Context) -> None:
        seen.append(context.task.name)

    names = [f"n{i}" for i in range(40)]
    async with running(app) as ctx:
        await ctx.schedule_tasks(parted, {n: {"execute_at": T0} for n in names})
        await clock.advance(1)
    expected = sorted(n for n in names if default_partition_selector(4, n) in (0, 1))
    assert sorted(seen) == expected
    assert 0 < len(expected) < len(names)

    def custom(partition_count: int, task_id: str) -> int:
        return int(task_id[1:]) % partition_count

    app2 = make_app(backend, clock)

    @app2.partitioned_task(partition_count=3, partition_selector=custom, poll_partitions=[2])
    async def custom_parted(context: Context) -> None:
        seen.append(context.task.name)

    seen.clear()
    async with running(app2) as ctx:
        await ctx.schedule_tasks(custom_parted, {n: {"execute_at": T0} for n in names})
        await clock.advance(1)
    assert sorted(seen) == sorted(n for n in names if int(n[1:]) % 3 == 2)


async def test_schedule_task_wakes_the_loop_for_sooner_work(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=5))
    started: list[datetime.datetime] = []

    @app.dynamic_task()
    async def prompt(context: Context) -> None:
        started.append(clock.now())

    async with running(app) as ctx:
        await clock.advance(10)
        await ctx.schedule_task(prompt, "soon", execute_at=T0 + 12 * S)
        await ctx.schedule_task(prompt, "now", execute_at=T0)
        await clock.advance(5)
    assert started == [T0 + 10 * S, T0 + 12 * S]


async def test_at_most_once_instances(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.dynamic_task(execution_mode=ExecutionMode.AT_MOST_ONCE)
    async def fragile(context: Context) -> None:
        seen.append(context.scheduled_at)
        raise RuntimeError("boom")

    async with running(app) as ctx:
        await ctx.schedule_task(fragile, "x", interval=10 * S)
        await clock.advance(25)
        state = await ctx.get_task(fragile, "x")
    assert seen == [T0 + 10 * S, T0 + 20 * S]
    assert state is not None and state.locked_by is None and state.scheduled_at == T0 + 30 * S


async def test_schedule_task_validation(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)

    @app.dynamic_task()
    async def job(context: Context) -> None: ...

    @app.task(interval=S)
    async def static(context: Context) -> None: ...

    async with app.create() as ctx:
        with pytest.raises(ValueError, match="not a dynamic task"):
            await ctx.schedule_task(static, "x", interval=S)
        with pytest.raises(ValueError, match="one of schedule, interval or execute_at"):
            await ctx.schedule_task(job, "x")
        with pytest.raises(ValueError, match="only one of"):
            await ctx.schedule_task(job, "x", interval=S, schedule="* * * * *")
        with pytest.raises(ValueError, match="cron"):
            await ctx.schedule_task(job, "x", schedule="not a cron")
        with pytest.raises(ValueError, match="JSON"):
            await ctx.schedule_task(job, "x", interval=S, payload=object())
        with pytest.raises(ValueError, match="name"):
            await ctx.schedule_task(job, "", interval=S)
        with pytest.raises(ValueError, match="timezone"):
            await ctx.schedule_task(job, "x", interval=S, timezone="Europe/Dublin")
        with pytest.raises(ValueError, match="instance name"):
            await ctx.unschedule_task(job)
        # nothing was stored by the failed calls
        assert len(await ctx.list_tasks(job)) == 0


async def test_concurrent_schedule_task_calls_share_register_calls(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, batch_size=50)

    @app.dynamic_task()
    async def job(context: Context) -> None: ...

    async with app.create() as ctx:
        repository = counters(ctx.repository)
        before = repository.calls.get("register", 0)
        # the same name twice in one round: both applied, in call order
        await asyncio.gather(
            *(ctx.schedule_task(job, f"n{i}", interval=60 * S, i=i) for i in range(120)),
            ctx.schedule_task(job, "n0", interval=60 * S, i="updated"),
        )
        calls = repository.calls["register"] - before
        assert calls <= 4  # 121 registrations in batches of at most 50
        state = await ctx.get_task(job, "n0")
        assert state is not None and state.task.args == {"i": "updated"}
        assert len(await ctx.list_tasks(job, limit=500)) == 120


async def test_trigger_task_with_reschedule_makes_a_task_or_instance_due_now(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    runs: list[tuple[str, datetime.datetime]] = []

    @app.task(interval=100 * S)
    async def static(context: Context) -> None:
        runs.append(("static", clock.now()))

    @app.dynamic_task()
    async def dyn(context: Context) -> None:
        runs.append((context.task.name, clock.now()))

    async with running(app) as ctx:
        await ctx.schedule_task(dyn, "a", interval=100 * S)
        await clock.advance(5)
        await ctx.trigger_task(static, reschedule=True)
        await ctx.trigger_task(dyn, "a", reschedule=True)
        await clock.advance(1)
        with pytest.raises(ValueError, match="no stored run"):
            await ctx.trigger_task(dyn, "missing", reschedule=True)
        state = await ctx.get_task(static)
    assert sorted(runs) == [("a", T0 + 5 * S), ("static", T0 + 5 * S)]
    # the runs after a triggered one follow from it
    assert state is not None and state.scheduled_at == T0 + 105 * S
