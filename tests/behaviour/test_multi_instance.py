"""Several app instances on one store: leases coordinate them. Shared-storage backends."""

from __future__ import annotations

import contextlib
import datetime

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, Pyncette

pytestmark = [pytest.mark.anyio, pytest.mark.shared_storage]
S = datetime.timedelta(seconds=1)


def apps(
    backend: BackendConfig, clock: VirtualClock, count: int, **options: object
) -> list[Pyncette]:
    return [make_app(backend, clock, **options) for _ in range(count)]


@pytest.mark.parametrize("mode", [ExecutionMode.AT_MOST_ONCE, ExecutionMode.AT_LEAST_ONCE])
async def test_each_scheduled_run_executes_once_across_instances(
    backend: BackendConfig, clock: VirtualClock, mode: ExecutionMode
) -> None:
    runs: list[tuple[int, datetime.datetime]] = []
    instances = apps(backend, clock, 3, batch_size=4)
    for index, app in enumerate(instances):

        def bind(i: int, app: Pyncette) -> None:
            @app.task(interval=10 * S, execution_mode=mode)
            async def ticking(context: Context) -> None:
                runs.append((i, context.scheduled_at))

            @app.dynamic_task(execution_mode=mode)
            async def queue(context: Context) -> None:
                runs.append((i, context.scheduled_at))

        bind(index, app)

    async with contextlib.AsyncExitStack() as stack:
        contexts = [await stack.enter_async_context(running(app)) for app in instances]
        queue = instances[0]._tasks["queue"]
        await contexts[0].schedule_tasks(
            queue, {f"job-{n}": {"execute_at": T0 + (n % 7) * S} for n in range(40)}
        )
        await clock.advance(100)
    static_runs = sorted(
        at for _, at in runs if (at - T0) % (10 * S) == datetime.timedelta(0) and at > T0 + 6 * S
    )
    assert static_runs == [T0 + i * 10 * S for i in range(1, 11)]
    assert len(runs) == 40 + 10
    assert len({i for i, _ in runs}) > 1  # the work was shared


async def test_expired_lease_is_taken_over_by_another_instance(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    first, second = apps(backend, clock, 2)
    runs: list[tuple[str, datetime.datetime]] = []

    @first.dynamic_task(lease_duration=30 * S)
    async def job(context: Context) -> None:
        runs.append(("first", clock.now()))
        await clock.sleep(10_000)  # hangs, as if the process had died

    @second.dynamic_task(name="job", lease_duration=30 * S)
    async def job_elsewhere(context: Context) -> None:
        runs.append(("second", clock.now()))

    # leaving the block cancels the hung execution, as a second signal would
    async with running(first, cancel_on_exit=True) as ctx_first:
        await ctx_first.schedule_task(job, "important", execute_at=T0 + S)
        await clock.advance(2)
        assert runs == [("first", T0 + S)]
        ctx_first.shutdown()  # stops polling; the hung execution keeps its lease
        async with running(second) as ctx_second:
            await clock.advance(40)
            assert await ctx_second.get_task(job_elsewhere, "important") is None
    assert runs == [("first", T0 + S), ("second", T0 + 31 * S)]
