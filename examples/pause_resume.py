"""Pausing and resuming a task at run time. Run: python examples/pause_resume.py"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

from pyncette import Context, Pyncette, PyncetteContext

app = Pyncette()


@app.task(interval=datetime.timedelta(seconds=1))
async def heartbeat_report(context: Context) -> None:
    print(f"report for {context.scheduled_at:%H:%M:%S}", flush=True)


async def maintenance_window(ctx: PyncetteContext) -> None:
    await asyncio.sleep(2.5)
    await ctx.pause_task(heartbeat_report)  # e.g. while a downstream is being upgraded
    state = await ctx.get_task(heartbeat_report)
    print(f"paused: {state is not None and state.paused}", flush=True)
    await asyncio.sleep(3)
    next_at = await ctx.resume_task(heartbeat_report)  # from now; resume_from= to catch up
    print(f"resumed, next run at {next_at:%H:%M:%S}", flush=True)


@app.fixture()
async def maintenance(ctx: PyncetteContext) -> AsyncIterator[None]:
    window = asyncio.ensure_future(maintenance_window(ctx))
    yield
    window.cancel()


if __name__ == "__main__":
    app.main()
