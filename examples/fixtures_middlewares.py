"""Fixtures inject dependencies; middlewares wrap every execution.
Run: python examples/fixtures_middlewares.py"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pyncette import Context, Pyncette, PyncetteContext

logger = logging.getLogger("example")
app = Pyncette()


class Database:
    def __init__(self) -> None:
        self.rows: list[str] = []

    async def insert(self, row: str) -> None:
        self.rows.append(row)


@app.fixture()
async def db(app_context: PyncetteContext) -> AsyncIterator[Database]:
    database = Database()
    print("database connected", flush=True)
    yield database
    print(f"database closed after {len(database.rows)} rows", flush=True)


@app.middleware
async def timing(context: Context, next: Callable[[], Awaitable[None]]) -> None:
    started = time.perf_counter()
    try:
        await next()
    finally:
        print(f"{context.task.name} took {time.perf_counter() - started:.4f} s", flush=True)


@app.middleware
async def swallow_errors(context: Context, next: Callable[[], Awaitable[None]]) -> None:
    try:
        await next()
    except ValueError:
        logger.warning("ignored a ValueError in %s", context.task.name)


@app.task(interval=datetime.timedelta(seconds=1))
async def record(context: Context) -> None:
    await context.db.insert(f"row for {context.scheduled_at:%H:%M:%S}")


if __name__ == "__main__":
    app.main()
