"""Scheduling policies: misfire grace, coalescing missed runs, overlap, and jitter.
Run: python examples/scheduling_policies.py"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

from pyncette import Context, Pyncette, PyncetteContext
from pyncette.events import ExecutionSkipped

app = Pyncette()
SECOND = datetime.timedelta(seconds=1)
slow_runs_left = [1]


# A run found more than 1 s late is skipped, not executed. The first run takes 3.5 s,
# so the runs due meanwhile are found late: with coalesce="all" each is claimed in turn,
# those more than 1 s late are skipped, and the schedule carries on.
@app.task(interval=SECOND, misfire_grace_time=SECOND, coalesce="all")
async def snapshot(context: Context) -> None:
    print(f"snapshot for {context.scheduled_at:%H:%M:%S.%f}", flush=True)
    if slow_runs_left.pop() if slow_runs_left else 0:
        await asyncio.sleep(3.5)


# Several missed runs become one: the earliest of them, then the first run after the
# claim ("latest", also spelled fast_forward=True, skips to the first run after it ends).
@app.task(interval=2 * SECOND, coalesce="earliest")
async def digest(context: Context) -> None:
    print(f"digest for {context.scheduled_at:%H:%M:%S}", flush=True)


# A 2.5 s export every second: with overlap="skip" the runs that fall due while one is
# going on are dropped ("buffer_one" would run the last of them next, "allow" would
# start each on time beside the running one).
@app.task(interval=SECOND, overlap="skip")
async def export(context: Context) -> None:
    print(f"export for {context.scheduled_at:%H:%M:%S} starts", flush=True)
    await asyncio.sleep(2.5)


# Many instances on one cron schedule (every 5 s, seconds last) spread over 3 s: each
# run starts at its nominal time plus a fixed, per-instance-and-run offset.
@app.dynamic_task(schedule="* * * * * */5", max_jitter=3 * SECOND)
async def poll_feed(context: Context) -> None:
    print(f"poll_feed {context.task.name} at {context.scheduled_at:%H:%M:%S.%f}", flush=True)


def on_skipped(event: ExecutionSkipped) -> None:
    print(f"skipped {event.task} scheduled at {event.scheduled_at:%H:%M:%S}", flush=True)


app.subscribe(on_skipped, ExecutionSkipped)


@app.fixture()
async def feeds(ctx: PyncetteContext) -> AsyncIterator[None]:
    await ctx.schedule_tasks(poll_feed, {f"feed-{n}": {} for n in range(4)})
    # one instance with its own policies: no jitter, and a grace of 10 s
    await ctx.schedule_task(poll_feed, "urgent", max_jitter=None, misfire_grace_time=10 * SECOND)
    yield


if __name__ == "__main__":
    app.main()
