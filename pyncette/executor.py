"""Executors decide how claimed executions run: concurrently (default) or one by one.

An executor is an async context manager. Leaving it waits for the executions it
started, or cancels them first when it is left by ``CancelledError``. Pyncette 1.x
custom executors (an async context manager with ``spawn_task(awaitable)``, built with
keyword arguments) are accepted as ``executor_cls`` too; see :func:`adapt`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """What the poll loop needs of an executor."""

    @property
    def capacity(self) -> int:
        """How many more executions can start now."""
        ...

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None: ...

    async def wait_for_capacity(self) -> None: ...

    def wake(self) -> None:
        """Release anyone waiting for capacity (on shutdown)."""
        ...


class DefaultExecutor:
    """Runs executions concurrently, at most ``concurrency_limit`` at once.

    Each execution runs in one asyncio task from its start to its end, in a copy of the
    context of the code that started it. Executions started together begin one after
    another in one task; those that finish without waiting for anything end there, and
    the first that waits keeps that task to itself while each one after it gets a task
    of its own. So ``asyncio.current_task()`` in an execution that never waits is a task
    that other executions ran in too: keep no reference to it for later (to cancel it,
    say) once the execution has ended.

    The scheduler never claims more work than :attr:`capacity` allows, so a saturated
    instance leaves due tasks to other instances instead of hoarding leases.
    """

    def __init__(self, concurrency_limit: int = 100, **_: Any) -> None:
        self.concurrency_limit = concurrency_limit
        self._running: dict[Coroutine[Any, Any, None], asyncio.Future[Any]] = {}
        """Each running execution (its coroutine) with the task that runs it."""
        self._queued: collections.deque[Coroutine[Any, Any, None]] = collections.deque()
        """Executions :meth:`start` was given that have not yet begun."""
        self._starter: asyncio.Task[None] | None = None
        """The task that will begin the queued executions."""
        self._freed = asyncio.Event()

    async def __aenter__(self) -> DefaultExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._running and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            logger.warning("Cancelling %d running executions", len(self._running))
            self.cancel()
        if self._running:
            logger.info("Waiting for %d running executions to finish", len(self._running))
        try:
            await self.join()
        except asyncio.CancelledError:
            # cancelled while waiting (a second signal during a graceful exit): cancel
            # them too, so none outlives the backend that is about to close
            self.cancel()
            await self.join()
            raise

    @property
    def capacity(self) -> int:
        return self.concurrency_limit - len(self._running) - len(self._queued)

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        self.start(execution)

    def start(self, execution: Coroutine[Any, Any, None]) -> None:
        """:meth:`spawn` without waiting: what the poll loop calls when ``spawn`` is this
        class's own (see :func:`starter`).

        The execution begins at the loop's next turn, in its own copy of the current
        context, in a task that begins the executions queued with it one after another.
        Each that finishes without waiting for anything ends there. The first that waits
        keeps that task to itself until it ends, and every execution still queued then
        gets a task of its own, as all did before. So an execution runs in one task from
        its start to its end, and a batch of executions that never wait costs one task,
        not one each.
        """
        self._queued.append(execution)
        if self._starter is None:
            starter = asyncio.get_running_loop().create_task(self._begin_queued())
            starter.add_done_callback(self._starter_ended)
            self._starter = starter

    async def _begin_queued(self) -> None:
        queued = self._queued
        while queued:
            execution = queued.popleft()
            context = contextvars.copy_context()
            try:
                step = context.run(execution.send, None)
            except StopIteration:
                continue
            except (KeyboardInterrupt, SystemExit):
                self._hand_over()
                raise
            except BaseException as error:  # what a task of its own would have ended with
                if not isinstance(error, asyncio.CancelledError):
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "Execution failed", "exception": error}
                    )
                continue
            # it waits: this task is now the execution's own
            self._running[execution] = self._hand_over()
            try:
                await _go_on(execution, context, step)
            finally:
                del self._running[execution]
                self._freed.set()
            return
        self._starter = None
        self._freed.set()

    def _starter_ended(self, task: asyncio.Future[None]) -> None:
        """A starter still in place when it ends was cancelled before it began the queued
        executions (from outside: the executor's own :meth:`cancel` drops them itself):
        they are closed, so that their places come free."""
        if task is self._starter:
            self._drop_queued()

    def _hand_over(self) -> asyncio.Task[None]:
        """The starter task leaves the queue, each execution in it to a task of its own;
        returns the starter."""
        task = self._starter
        assert task is not None
        self._starter = None
        queued, running = self._queued, self._running
        if queued:
            create_task = asyncio.get_running_loop().create_task
            while queued:
                execution = queued.popleft()
                running[execution] = create_task(self._tracked(execution))
        self._freed.set()
        return task

    async def _tracked(self, execution: Coroutine[Any, Any, None]) -> None:
        """Run ``execution`` and free its place as it ends. Done here rather than in a
        done callback: each callback is one more turn of the event loop per execution."""
        try:
            await execution
        finally:
            self._running.pop(execution, None)
            self._freed.set()

    async def spawn_task(self, execution: Awaitable[None]) -> None:
        """Pyncette 1.x's name for :meth:`spawn`."""
        await self.spawn(_awaiting(execution))

    def _finished(self, execution: Coroutine[Any, Any, None], *_: object) -> None:
        """A cancelled task's cleanup: one cancelled before it started never ran
        :meth:`_tracked`, so its coroutine is closed here (unawaited, without a warning)."""
        if self._running.pop(execution, None) is not None:
            execution.close()
            self._freed.set()

    async def wait_for_capacity(self) -> None:
        while self.capacity <= 0:
            self._freed.clear()
            await self._freed.wait()

    def wake(self) -> None:
        self._freed.set()

    async def join(self) -> None:
        """Wait until every running execution has finished."""
        while self._running or self._queued:
            tasks: list[asyncio.Future[Any]] = list(self._running.values())
            if self._starter is not None:
                tasks.append(self._starter)
            done, _ = await asyncio.wait(tasks)  # (a starter ending drops what it left)
            for execution, task in list(self._running.items()):
                if task in done:  # one cancelled before it started has not left by itself
                    self._finished(execution)

    def cancel(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
            self._drop_queued()
        for execution, task in list(self._running.items()):
            task.cancel()
            task.add_done_callback(functools.partial(self._finished, execution))

    def _drop_queued(self) -> None:
        """Close the executions that have not begun (unawaited, without a warning)."""
        self._starter = None
        while self._queued:
            self._queued.popleft().close()
        self._freed.set()


@types.coroutine
def _go_on(
    execution: Coroutine[Any, Any, None], context: contextvars.Context, step: Any
) -> Generator[Any, None, None]:
    """Run ``execution``, suspended at ``step`` (what it last yielded to its task), to its
    end, each step in ``context``: the task that awaits this passes what the execution
    yields to the event loop and throws what the task is thrown (a cancellation) into it."""
    run = context.run
    while True:
        try:
            yield step
        except BaseException as error:
            try:
                step = run(execution.throw, error)
            except StopIteration:
                return
        else:
            try:
                step = run(execution.send, None)
            except StopIteration:
                return


class SynchronousExecutor(DefaultExecutor):
    """Runs executions one at a time, in the poll loop itself.

    It claims one row at a time too: rows claimed in a batch would wait in line for
    the ones before them, and their leases could expire while they wait.
    """

    @property
    def capacity(self) -> int:
        return 0 if self._running else 1

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._tracked(execution))
        self._running[execution] = task
        await asyncio.shield(task)


async def _awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


class _SpawnTaskRunner:
    """Drives a Pyncette 1.x executor: it throttles inside ``spawn_task`` itself, so the
    loop claims at most a batch at a time and hands every execution over."""

    def __init__(self, executor: Any, claim_limit: int) -> None:
        self._executor = executor
        self._claim_limit = claim_limit

    @property
    def capacity(self) -> int:
        """At most ``concurrency_limit`` (and a batch) at a time: rows handed over
        beyond what the executor runs at once would wait in ``spawn_task`` while their
        leases run."""
        return self._claim_limit

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        await self._executor.spawn_task(execution)

    async def wait_for_capacity(self) -> None:
        return None

    def wake(self) -> None:
        return None


def starter(runner: Runner) -> Callable[[Coroutine[Any, Any, None]], None] | None:
    """``runner``'s way to start an execution without awaiting: a
    :class:`DefaultExecutor`'s :meth:`~DefaultExecutor.start` unless a subclass changed
    how it spawns; ``None`` for any other runner (the loop awaits ``spawn``)."""
    if isinstance(runner, DefaultExecutor) and type(runner).spawn is DefaultExecutor.spawn:
        return runner.start
    return None


def adapt(executor: object, claim_limit: int) -> Runner:
    """The :class:`Runner` for an executor built from ``executor_cls``.

    Executors of this module (and subclasses that keep their ``spawn``) run natively;
    anything else with a ``spawn_task`` coroutine method is driven the 1.x way.
    """
    if isinstance(executor, DefaultExecutor) and (
        type(executor).spawn_task is DefaultExecutor.spawn_task
    ):
        return executor
    if not callable(getattr(executor, "spawn_task", None)):
        raise ValueError(
            f"executor_cls built {executor!r}, which has no spawn_task(awaitable) method"
        )
    if not hasattr(executor, "__aenter__") or not hasattr(executor, "__aexit__"):
        raise ValueError(f"executor_cls built {executor!r}, which is not an async context manager")
    return _SpawnTaskRunner(executor, claim_limit)
