"""Shared fixtures. Every behaviour test takes ``backend`` and so runs on every backend;
every test taking ``clock`` runs under both clocks of :mod:`harness`.

Each backend lives in its own plugin module (``backend_*.py``) that defines a fixture
named ``<backend>_backend`` yielding a :class:`backends.BackendConfig`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pytest

from backends import BACKENDS, BackendConfig
from harness import T0, ClockFactory, VirtualClock, clock_factory
from timemachine import TimeMachine, describe_tasks

pytest_plugins = ["backend_memory", "backend_sql", "backend_redis", "backend_dynamodb"]

HANG_SECONDS = 120.0
"""Real seconds after which a virtual-time test is failed, with the stacks of every task,
instead of hanging the run (a scheduler that waits for virtual time nobody moves)."""
CLOCK_KINDS = ("fake", "patched")
"""``fake``: a clock injected with ``Pyncette(clock=...)``; ``patched``: the default clock,
driven by a time machine patched into the process as Pyncette 1.x tests do."""


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        shared_only = metafunc.definition.get_closest_marker("shared_storage") is not None
        params = [
            pytest.param(name, marks=info.marks, id=name)
            for name, info in BACKENDS.items()
            if info.shared or not shared_only
        ]
        metafunc.parametrize("backend", params, indirect=True)
    if "clock_kind" in metafunc.fixturenames:
        injected_only = metafunc.definition.get_closest_marker("injected_clock_only") is not None
        kinds = CLOCK_KINDS[:1] if injected_only else CLOCK_KINDS
        metafunc.parametrize("clock_kind", kinds, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and inspect.iscoroutinefunction(item.obj)
            and {"clock", "make_clock", "timemachine"} & set(item.fixturenames)
        ):
            item.obj = _failing_when_hung(item.obj)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if call.excinfo is not None:
        # A failed virtual-time test may leave tasks behind; collect them now, so their
        # finalizers do not run while pytest parses source for the report (CPython 3.11
        # then fails the whole run with "AST constructor recursion depth mismatch").
        gc.collect()
    return (yield)


def _failing_when_hung(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """Fail ``test`` with the stacks of every task if it runs for ``HANG_SECONDS``: cancel
    it; if its clean-up is stuck too, cancel the tasks it started, a few times over."""

    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        runner = asyncio.current_task()
        assert runner is not None
        loop = asyncio.get_running_loop()
        before = asyncio.all_tasks(loop)
        stacks: list[str] = []
        alarm: asyncio.TimerHandle

        def expire() -> None:
            nonlocal alarm
            if stacks:  # still stuck, leaving the test this time
                for task in asyncio.all_tasks(loop) - before:
                    task.cancel()
            stacks.append(describe_tasks())
            runner.cancel()
            if len(stacks) < 4:
                alarm = loop.call_later(HANG_SECONDS / 10, expire)

        alarm = loop.call_later(HANG_SECONDS, expire)
        try:
            await test(*args, **kwargs)
        except asyncio.CancelledError:
            if not stacks:
                raise
        finally:
            alarm.cancel()
        if stacks:
            while runner.cancelling():
                runner.uncancel()
            raise AssertionError(
                f"Hung for {HANG_SECONDS:.0f} real seconds; tasks then:\n{stacks[0]}"
            )

    return guarded


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> BackendConfig:
    config: BackendConfig = request.getfixturevalue(f"{request.param}_backend")
    return config


@pytest.fixture
def clock_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_clock(clock_kind: str, monkeypatch: pytest.MonkeyPatch) -> ClockFactory:
    """Makes the test's clock, starting at a given time (use ``clock`` for ``T0``)."""
    return clock_factory(clock_kind, monkeypatch)


@pytest.fixture
def clock(make_clock: ClockFactory) -> VirtualClock:
    return make_clock(T0)


@pytest.fixture
def timemachine(monkeypatch: pytest.MonkeyPatch) -> TimeMachine:
    """A time machine patched into the process, for tests written as 1.x tests are."""
    machine = TimeMachine(T0)
    machine.install(monkeypatch)
    return machine
