"""Controlling runs at run time: pause, resume, an extra run now, and a backfill.
Run: python examples/controlling_runs.py"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

from pyncette import Context, Pyncette, PyncetteContext

app = Pyncette()


@app.task(interval=datetime.timedelta(seconds=1))
async def heartbeat_report(context: Context) -> None:
    print(f"report for {context.scheduled_at:%H:%M:%S}", flush=True)


@app.task(schedule="0 * * * *")  # hourly
async def hourly_rollup(context: Context) -> None:
    print(f"rollup for {context.scheduled_at:%H:%M}", flush=True)


async def operator(ctx: PyncetteContext) -> None:
    now = datetime.datetime.now(datetime.UTC)
    # the rollups of the last three hours, each once, with its own scheduled_at
    await ctx.backfill_task(hourly_rollup, now - datetime.timedelta(hours=3), now)
    await ctx.trigger_task(hourly_rollup)  # one more run now; the hourly schedule stays
    await asyncio.sleep(1.5)
    await ctx.pause_task(heartbeat_report)  # e.g. while a downstream is being upgraded
    state = await ctx.get_task(heartbeat_report)
    print(f"paused: {state is not None and state.paused}", flush=True)
    await asyncio.sleep(2)
    next_at = await ctx.resume_task(heartbeat_report)  # from now; resume_from= to catch up
    print(f"resumed, next run at {next_at:%H:%M:%S}", flush=True)


@app.fixture()
async def operations(ctx: PyncetteContext) -> AsyncIterator[None]:
    work = asyncio.ensure_future(operator(ctx))
    yield
    work.cancel()


if __name__ == "__main__":
    app.main()
