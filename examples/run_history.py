"""The last run of each task, and a run history, for a status page.
Run: python examples/run_history.py"""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator

from pyncette import Context, FailureMode, Pyncette, PyncetteContext

# keep the last 5 runs of every task and instance, for a day
app = Pyncette(run_history=5, run_history_retention=datetime.timedelta(days=1))
upstream = random.Random(3)


@app.task(interval=datetime.timedelta(seconds=0.5), failure_mode=FailureMode.COMMIT)
async def import_rates(context: Context) -> None:
    await asyncio.sleep(0.05)
    if upstream.random() < 0.4:
        raise TimeoutError("rates service did not answer")


async def status_page(ctx: PyncetteContext) -> None:
    await asyncio.sleep(3)
    state = await ctx.get_task(import_rates)
    if state is not None and state.last_run is not None:
        print(
            f"last run: {state.last_status} at {state.last_run_at:%H:%M:%S.%f} "
            f"in {state.last_duration}, error {state.last_error}",
            flush=True,
        )
    for run in await ctx.task_history(import_rates):
        print(f"  {run.scheduled_at:%H:%M:%S.%f} {run.status:<9} {run.error or ''}", flush=True)
    print("status page done", flush=True)


@app.fixture()
async def status(ctx: PyncetteContext) -> AsyncIterator[None]:
    work = asyncio.ensure_future(status_page(ctx))
    yield
    work.cancel()


if __name__ == "__main__":
    app.main()
