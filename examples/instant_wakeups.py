"""Instant wake-ups: a job queued by one process starts on another at once, not at that
one's next poll. Run: python examples/instant_wakeups.py

The worker polls every 10 s. A second app, standing in for a web process, queues a job
due now every 2 s. With PostgreSQL or Redis (set ``PYNCETTE_POSTGRES_URL`` or
``PYNCETTE_REDIS_URL``) each job starts within milliseconds; on the default, a SQLite
file shared by the two apps, there is no channel between processes and a job waits for
the next poll (up to 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import tempfile
from typing import Any

from pyncette import Context, Pyncette


def backend_options(folder: str) -> dict[str, Any]:
    if url := os.environ.get("PYNCETTE_POSTGRES_URL"):
        from pyncette.postgres import postgres_repository

        return {"repository_factory": postgres_repository, "postgres_url": url}
    if url := os.environ.get("PYNCETTE_REDIS_URL"):
        from pyncette.redis import redis_repository

        return {"repository_factory": redis_repository, "redis_url": url}
    return {"sqlite_database": os.path.join(folder, "jobs.db")}


def make_app(options: dict[str, Any], **settings: Any) -> Pyncette:
    app = Pyncette(instant_wakeups=True, **settings, **options)

    @app.dynamic_task()
    async def send_receipt(context: Context) -> None:
        now = datetime.datetime.now(datetime.UTC)
        waited = (now - context.scheduled_at).total_seconds() * 1000
        print(f"sent {context.task.name}, {waited:.0f} ms after it was queued", flush=True)

    return app


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with tempfile.TemporaryDirectory() as folder:
        options = backend_options(folder)
        worker = make_app(options, poll_interval=datetime.timedelta(seconds=10))
        web = make_app(options)
        async with worker.create() as worker_ctx, web.create() as web_ctx:
            wakeups = "on" if worker_ctx.repository.wake_ups else "not available: polling"
            print(f"instant wake-ups {wakeups}", flush=True)
            polling = asyncio.ensure_future(worker_ctx.run())
            order = 0
            while not stop.is_set():
                order += 1
                now = datetime.datetime.now(datetime.UTC)
                await web_ctx.schedule_task(
                    web.tasks["send_receipt"], f"receipt-{order}", execute_at=now
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2)
            worker_ctx.shutdown()
            await polling


if __name__ == "__main__":
    asyncio.run(main())
