"""The process-level API: app.main() signals, and the compatibility seams of the default
clock (patching ``_current_time``, ``asyncio.sleep`` and ``asyncio.wait_for``)."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

import pyncette.pyncette
from harness import T0
from pyncette import Context, FailureMode, Pyncette
from pyncette.clock import DefaultClock, wall_clock_deadline
from pyncette.memory import memory_repository
from pyncette.utils import with_heartbeat

S = datetime.timedelta(seconds=1)


@pytest.mark.anyio
async def test_default_clock_is_driven_by_patching_the_seams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Pyncette 1.x style time machine: time only moves when the scheduler waits."""
    now = T0
    real_sleep = asyncio.sleep
    waits: list[str] = []

    def current_time() -> datetime.datetime:
        return now

    async def sleep(delay: float, result: Any = None) -> Any:
        nonlocal now
        waits.append("sleep")
        now += datetime.timedelta(seconds=delay)
        await real_sleep(0)
        return result

    async def wait_for(awaitable: Awaitable[Any], timeout: float | None) -> Any:
        nonlocal now
        waits.append("wait_for")
        inner = asyncio.ensure_future(awaitable)
        for _ in range(3):
            await real_sleep(0)
        if inner.done():
            return inner.result()
        inner.cancel()
        now += datetime.timedelta(seconds=timeout or 0)
        raise TimeoutError

    monkeypatch.setattr(pyncette.pyncette, "_current_time", current_time)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    monkeypatch.setattr(asyncio, "wait_for", wait_for)

    app = Pyncette(repository_factory=memory_repository)
    seen: list[datetime.datetime] = []
    beats: list[datetime.datetime | None] = []

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) >= 3:
            context.app_context.shutdown()

    @app.task(interval=5 * S, lease_duration=4 * S)
    @with_heartbeat()
    async def beating(context: Context) -> None:
        for _ in range(5):  # the background heartbeat also waits through asyncio.sleep
            await asyncio.sleep(1)
        state = await context.app_context.get_task(context.task)
        beats.append(state.locked_until if state else None)

    async with app.create() as ctx:
        await ctx.run()
    assert seen == [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S]
    # claimed at 5 s with a 4 s lease: the heartbeat moved the expiry past 9 s
    assert beats and beats[0] is not None and beats[0] > T0 + 9 * S
    assert {"sleep", "wait_for"} <= set(waits)


@pytest.mark.anyio
async def test_a_run_whose_lease_ran_out_while_the_loop_was_blocked_is_not_started() -> None:
    """On the system clock the worker checks a run's lease against a ``time.time()``
    reading (no datetime built): a run whose lease expired while an earlier run of the
    same batch blocked the loop is still not started under that lease; it runs once,
    claimed again."""
    app = Pyncette(repository_factory=memory_repository, batch_size=10)
    leases: dict[str, object] = {}

    @app.dynamic_task(lease_duration=datetime.timedelta(seconds=0.5))
    async def job(context: Context) -> None:
        leases[context.task.name] = context.lease
        if context.task.name == "a":
            time.sleep(0.8)  # blocks the loop past the batch's leases
        if len(leases) == 2:
            context.app_context.shutdown()

    async with app.create() as ctx:
        due = datetime.datetime.now(datetime.UTC) - S
        await ctx.schedule_tasks(job, {"a": {"execute_at": due}, "b": {"execute_at": due}})
        await asyncio.wait_for(ctx.run(), 30)
    assert set(leases) == {"a", "b"}
    assert leases["a"] != leases["b"], "b started under the lease that expired before it began"


@pytest.mark.anyio
async def test_a_run_started_on_the_system_clock_stores_when_it_started() -> None:
    """The start of a run the worker began without building a datetime is derived from
    the same ``time.time()`` reading when its outcome needs it (here: a failed one-off
    that stays, unlocked, with the failure stored)."""
    app = Pyncette(repository_factory=memory_repository)
    window: list[datetime.datetime] = []

    @app.dynamic_task(failure_mode=FailureMode.UNLOCK)
    async def job(context: Context) -> None:
        window.append(datetime.datetime.now(datetime.UTC))
        await asyncio.sleep(0.05)
        context.app_context.shutdown()
        raise RuntimeError("failed on purpose")

    async with app.create() as ctx:
        before = datetime.datetime.now(datetime.UTC)
        await ctx.schedule_task(job, "once", execute_at=before - S)
        await asyncio.wait_for(ctx.run(), 30)
        state = await ctx.get_task(job, "once")
    assert state is not None and state.last_run_at is not None and window
    assert before <= state.last_run_at <= window[0]
    assert state.last_error is not None and "failed on purpose" in state.last_error
    assert state.last_duration is not None
    assert state.last_duration >= datetime.timedelta(seconds=0.05)


def test_the_wall_clock_deadline_is_given_only_for_the_unpatched_system_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    assert wall_clock_deadline(DefaultClock(), at) == at.timestamp()

    class OwnClock(DefaultClock):
        pass

    assert wall_clock_deadline(OwnClock(), at) is None
    with monkeypatch.context() as patched:
        patched.setattr(pyncette.pyncette, "_current_time", lambda: at)
        assert wall_clock_deadline(DefaultClock(), at) is None

    class FrozenDatetime(datetime.datetime):
        pass

    with monkeypatch.context() as patched:
        patched.setattr(datetime, "datetime", FrozenDatetime)
        assert wall_clock_deadline(DefaultClock(), at) is None
    assert wall_clock_deadline(DefaultClock(), at) == at.timestamp()


SCRIPT = """
import asyncio, datetime, logging, sys
from pyncette import Pyncette, Context

app = Pyncette()

@app.task(interval=datetime.timedelta(seconds=0.05))
async def work(context: Context) -> None:
    logging.getLogger("app").debug("a debug record")
    print("executed", type(asyncio.get_running_loop()).__module__, flush=True)
    if {hang}:
        await asyncio.sleep(3600)

if __name__ == "__main__":
    app.main()
"""


def _start(
    tmp_path: Path, hang: bool, head: list[str] | None = None, **env_vars: str
) -> subprocess.Popen[str]:
    """Start the app and wait for its first execution; the lines read until then are
    appended to ``head``."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SCRIPT.format(hang=hang)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_vars}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:  # wait for the first execution
        if head is not None:
            head.append(line)
        if line.startswith("executed"):
            return process
    raise AssertionError(f"app exited early with {process.wait()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_main_first_signal_shuts_down_gracefully(tmp_path: Path, signum: int) -> None:
    process = _start(tmp_path, hang=False)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "shutting down" in output


def test_main_second_signal_exits_at_once_non_zero(tmp_path: Path) -> None:
    process = _start(tmp_path, hang=True)
    process.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.5)  # waiting for the hung execution, as it should
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)
    assert process.returncode not in (0, None), output
    assert "exiting now" in output


def test_main_honours_log_level_and_use_uvloop(tmp_path: Path) -> None:
    head: list[str] = []
    process = _start(tmp_path, hang=False, head=head, LOG_LEVEL="debug", USE_UVLOOP="1")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)
    output = "".join(head) + output
    assert process.returncode == 0, output
    assert "DEBUG app: a debug record" in output  # logged at LOG_LEVEL=debug
    assert "executed uvloop" in output  # the loop is uvloop's


def test_main_default_loop_and_level(tmp_path: Path) -> None:
    head: list[str] = []
    process = _start(tmp_path, hang=False, head=head, LOG_LEVEL="", USE_UVLOOP="0")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)
    output = "".join(head) + output
    assert process.returncode == 0, output
    assert "executed asyncio" in output
    assert "a debug record" not in output and " INFO " in output


def test_main_rejects_a_bad_log_level(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SCRIPT.format(hang=False)))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "LOG_LEVEL": "chatty"},
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "LOG_LEVEL='CHATTY' is not a logging level" in done.stderr
