"""A finished one-off's row is deleted, so without run history its outcome would be
written nowhere: it is not built at all (at least once and at most once alike)."""

from __future__ import annotations

import datetime

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, outcome

pytestmark = [pytest.mark.anyio, pytest.mark.injected_clock_only("counts encoder calls")]
S = datetime.timedelta(seconds=1)


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statuses of the outcomes the worker builds."""
    built: list[str] = []
    original = outcome.encode

    def counting(status: outcome.RunStatus, **fields: object) -> str:
        built.append(status.value)
        return original(status, **fields)  # type: ignore[arg-type]

    monkeypatch.setattr(outcome, "encode", counting)
    return built


@pytest.mark.parametrize("mode", [ExecutionMode.AT_LEAST_ONCE, ExecutionMode.AT_MOST_ONCE])
@pytest.mark.parametrize("history", [0, 5])
async def test_a_finished_one_off_builds_an_outcome_only_for_its_history(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    encoded: list[str],
    mode: ExecutionMode,
    history: int,
) -> None:
    app = make_app(memory_backend, clock, run_history=history)
    ran: list[str] = []

    @app.dynamic_task(execution_mode=mode)
    async def remind(context: Context) -> None:
        ran.append(context.task.name)

    async with running(app) as ctx:
        await ctx.schedule_task(remind, "once", execute_at=T0 + 5 * S)
        await clock.advance(10)
        assert ran == ["once"]
        assert await ctx.get_task(remind, "once") is None
        entries = await ctx.task_history(remind, "once") if history else []
    if not history:
        assert encoded == []
    else:
        final = "started" if mode is ExecutionMode.AT_MOST_ONCE else "succeeded"
        assert encoded == [final]
        assert [entry.status.value for entry in entries] == [final]
