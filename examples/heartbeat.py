"""Long tasks keep their lease alive with heartbeats. Run: python examples/heartbeat.py"""

from __future__ import annotations

import asyncio
import datetime

from pyncette import Context, Pyncette
from pyncette.utils import with_heartbeat

app = Pyncette()


@app.task(interval=datetime.timedelta(seconds=2), lease_duration=datetime.timedelta(seconds=1))
async def cooperative(context: Context) -> None:
    for step in range(3):
        await asyncio.sleep(0.4)  # a chunk of work shorter than the lease
        await context.heartbeat()  # raises LeaseLostException if another instance took over
        print(f"cooperative: step {step} done, lease extended", flush=True)


@app.task(interval=datetime.timedelta(seconds=3), lease_duration=datetime.timedelta(seconds=1))
@with_heartbeat()
async def automatic(context: Context) -> None:
    await asyncio.sleep(2.5)  # longer than the lease: the background heartbeat keeps it
    print("automatic: finished without losing the lease", flush=True)


if __name__ == "__main__":
    app.main()
