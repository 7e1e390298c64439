"""The default executor's bookkeeping: an execution frees its place as it ends (no done
callback), and one cancelled before it started is cleaned up and never left unawaited;
executions that never wait share one task, and each execution keeps one task and its own
context from its start to its end."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import warnings

import anyio
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
    await asyncio.sleep(0)  # the first begins and waits: the second gets a task of its own
    await asyncio.sleep(0)  # and begins
    executor.cancel()
    await asyncio.wait_for(executor.join(), 1)
    assert sorted(cancelled) == [0, 1]
    assert executor.capacity == 2


async def test_join_returns_for_a_task_cancelled_from_outside_before_it_started() -> None:
    executor = DefaultExecutor()

    async def execution() -> None:
        await asyncio.sleep(10)

    before = asyncio.all_tasks()
    executor.start(execution())
    (task,) = asyncio.all_tasks() - before
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


async def test_executions_that_never_wait_share_one_task() -> None:
    executor = DefaultExecutor(concurrency_limit=10)
    tasks: list[asyncio.Task[object] | None] = []

    async def execution() -> None:
        tasks.append(asyncio.current_task())

    async with executor:
        for _ in range(5):
            executor.start(execution())
        assert executor.capacity == 5
    assert len(tasks) == 5
    assert len(set(tasks)) == 1
    assert tasks[0] is not asyncio.current_task()
    assert executor.capacity == 10


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_each_execution_keeps_its_task_and_its_own_context() -> None:
    executor = DefaultExecutor(concurrency_limit=10)
    seen: dict[int, tuple[str, asyncio.Task[object] | None, str, asyncio.Task[object] | None]] = {}

    async def execution(index: int, waits: bool) -> None:
        before = (VAR.get(), asyncio.current_task())
        VAR.set(f"set by {index}")
        if waits:
            async with asyncio.timeout(5):  # bound to the task it began in
                await asyncio.sleep(0.01)
        seen[index] = (*before, VAR.get(), asyncio.current_task())

    VAR.set("outer")
    async with executor:
        executor.start(execution(0, False))
        executor.start(execution(1, True))  # takes the starting task to itself
        executor.start(execution(2, False))  # then each of these gets a task of its own
        executor.start(execution(3, True))
    assert VAR.get() == "outer"
    for index in range(4):
        before, began_in, after, ended_in = seen[index]
        assert before == "outer"  # nothing set by an execution before it
        assert after == f"set by {index}"
        assert began_in is ended_in
    assert seen[0][1] is seen[1][1]
    assert len({seen[index][1] for index in (1, 2, 3)}) == 3


async def test_a_timeout_or_cancel_scope_in_a_waiting_execution_cancels_only_it() -> None:
    executor = DefaultExecutor(concurrency_limit=10)
    outcome: list[str] = []

    async def slow() -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            outcome.append("timed out")

    async def quick() -> None:
        outcome.append("quick")

    async def scoped() -> None:
        with anyio.move_on_after(0.01) as scope:  # anyio checks it leaves in its own task
            await anyio.sleep(5)
        outcome.append("moved on" if scope.cancelled_caught else "slept")

    async with executor:
        executor.start(quick())
        executor.start(slow())
        executor.start(quick())
    async with executor:
        executor.start(quick())
        executor.start(scoped())  # begins in the task the first began in
    assert sorted(outcome) == ["moved on", "quick", "quick", "quick", "timed out"]


async def test_an_error_escaping_an_execution_that_never_waits_is_reported() -> None:
    executor = DefaultExecutor(concurrency_limit=10)
    ran: list[int] = []

    async def failing() -> None:
        raise RuntimeError("escaped")

    async def fine(index: int) -> None:
        ran.append(index)

    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        async with executor:
            executor.start(fine(0))
            executor.start(failing())
            executor.start(fine(1))
    finally:
        loop.set_exception_handler(None)
    assert ran == [0, 1]
    assert [str(error) for error in errors] == ["escaped"]
    assert executor.capacity == 10


async def test_a_starter_cancelled_from_outside_frees_the_places_of_its_queue() -> None:
    executor = DefaultExecutor(concurrency_limit=3)
    started: list[int] = []

    async def execution(index: int) -> None:
        started.append(index)

    before = asyncio.all_tasks()
    for index in range(3):
        executor.start(execution(index))
    (starter,) = asyncio.all_tasks() - before
    starter.cancel()  # as a harness tearing down every task would
    assert executor.capacity == 0
    await asyncio.wait_for(executor.wait_for_capacity(), 1)  # no join() needed
    assert executor.capacity == 3
    executor.start(execution(3))  # a new batch begins as ever
    await asyncio.wait_for(executor.join(), 1)
    assert started == [3]
