"""A delay queue: one-off tasks with ``execute_at``. Run: python examples/delay_queue.py"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

from pyncette import Context, Pyncette, PyncetteContext

app = Pyncette()


@app.dynamic_task()
async def send_email(context: Context) -> None:
    print(f"sending {context.args['subject']!r} to {context.args['to']}", flush=True)


@app.fixture()
async def queue_some_mail(ctx: PyncetteContext) -> AsyncIterator[None]:
    now = datetime.datetime.now(datetime.UTC)
    # overdue: runs at once; the others run once, when due, and are then removed
    await ctx.schedule_task(
        send_email,
        "welcome",
        execute_at=now - datetime.timedelta(days=1),
        to="ann@example.com",
        subject="Welcome!",
    )
    for minutes in (1, 2):
        await ctx.schedule_task(
            send_email,
            f"nudge-{minutes}",
            execute_at=now + datetime.timedelta(seconds=minutes),
            to="ann@example.com",
            subject=f"Reminder {minutes}",
        )
    yield


if __name__ == "__main__":
    app.main()
