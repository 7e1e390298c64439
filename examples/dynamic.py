"""Dynamic task instances created at run time, one per user. Run: python examples/dynamic.py"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

from pyncette import Context, Pyncette, PyncetteContext

app = Pyncette()


@app.dynamic_task()
async def remind(context: Context) -> None:
    print(f"reminding {context.args['username']} ({context.task.name})", flush=True)


@app.partitioned_task(partition_count=4)
async def sync_account(context: Context) -> None:
    print(f"syncing account {context.task.name}", flush=True)


@app.fixture()
async def seed(ctx: PyncetteContext) -> AsyncIterator[None]:
    """Runs once at start-up, before the first tick: a natural place to add instances."""
    await asyncio.gather(
        ctx.schedule_task(remind, "bill", interval=datetime.timedelta(seconds=2), username="bill"),
        ctx.schedule_task(remind, "steve", schedule="* * * * * */3", username="steve"),
        ctx.schedule_task(remind, "temp", interval=datetime.timedelta(seconds=1), username="temp"),
    )
    await ctx.schedule_tasks(
        sync_account,
        {f"account-{n}": {"interval": datetime.timedelta(seconds=5)} for n in range(3)},
    )
    page = await ctx.list_tasks(remind)
    print("scheduled:", ", ".join(sorted(state.task.name for state in page)), flush=True)
    await ctx.unschedule_task(remind, "temp")
    yield


if __name__ == "__main__":
    app.main()
