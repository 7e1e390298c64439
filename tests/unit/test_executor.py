"""The default executor's bookkeeping: an execution frees its place as it ends (no done
callback), and one cancelled before it started is cleaned up and never left unawaited."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from pyncette.executor import DefaultExecutor, SynchronousExecutor, starter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_capacity_comes_back_as_each_execution_ends() -> None:
    executor = DefaultExecutor(concurrency_limit=3)
    gates = [asyncio.Event() for _ in range(3)]
    ended: list[int] = []

    async def execution(index: int) -> None:
        await gates[index].wait()
        ended.append(index)

    async with executor:
        for index in range(3):
            await executor.spawn(execution(index))
        assert executor.capacity == 0
        gates[1].set()
        await asyncio.wait_for(executor.wait_for_capacity(), 1)
        assert executor.capacity == 1
        assert ended == [1]
        gates[0].set()
        gates[2].set()
    assert executor.capacity == 3
    assert sorted(ended) == [0, 1, 2]


async def test_a_failing_execution_frees_its_place_too() -> None:
    executor = DefaultExecutor(concurrency_limit=1)

    async def failing() -> None:
        raise RuntimeError("boom")

    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        executor.start(failing())
        await asyncio.wait_for(executor.wait_for_capacity(), 1)
        assert executor.capacity == 1
    finally:
        loop.set_exception_handler(None)


async def test_cancelled_before_starting_it_is_closed_not_left_unawaited() -> None:
    executor = DefaultExecutor(concurrency_limit=5)
    started: list[int] = []

    async def execution(index: int) -> None:
        started.append(index)
        await asyncio.sleep(10)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index in range(5):
            executor.start(execution(index))
        executor.cancel()  # before any of them has had a turn of the loop
        await asyncio.wait_for(executor.join(), 1)
        gc.collect()
    assert started == []
    assert executor.capacity == 5
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_cancelled_while_running_each_one_leaves() -> None:
    executor = DefaultExecutor(concurrency_limit=2)
    cancelled: list[int] = []

    async def execution(index: int) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise

    executor.start(execution(0))
    executor.start(execution(1))
    await asyncio.sleep(0)
    executor.cancel()
    await asyncio.wait_for(executor.join(), 1)
    assert sorted(cancelled) == [0, 1]
    assert executor.capacity == 2


async def test_join_returns_for_a_task_cancelled_from_outside_before_it_started() -> None:
    executor = DefaultExecutor()

    async def execution() -> None:
        await asyncio.sleep(10)

    executor.start(execution())
    (task,) = list(executor._running.values())
    task.cancel()  # not through executor.cancel(): no cleanup callback was added
    await asyncio.wait_for(executor.join(), 1)
    assert executor.capacity == executor.concurrency_limit


async def test_the_loop_starts_without_awaiting_only_the_default_spawn() -> None:
    class Spawns(DefaultExecutor):
        async def spawn(self, execution):  # type: ignore[no-untyped-def]
            await super().spawn(execution)

    default = DefaultExecutor()
    assert starter(default) == default.start
    assert starter(Spawns()) is None
    assert starter(SynchronousExecutor()) is None
