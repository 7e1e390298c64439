"""Static tasks on a cron schedule and on an interval. Run: python examples/basic.py"""

from __future__ import annotations

import datetime

from pyncette import Context, Pyncette

app = Pyncette()


@app.task(schedule="* * * * * */2")
async def every_two_seconds(context: Context) -> None:
    print(f"cron task ran for {context.scheduled_at:%H:%M:%S}", flush=True)


@app.task(interval=datetime.timedelta(seconds=3))
async def every_three_seconds(context: Context) -> None:
    print(f"interval task ran for {context.scheduled_at:%H:%M:%S}", flush=True)


if __name__ == "__main__":
    app.main()
