"""One process of the start-up storm (``python -m chaos._storm_child INDEX``).

It imports every backend, says ``ready`` and then serves rounds on stdin/stdout, one
JSON object per line:

* ``{"cmd": "arm", "backend": ..., "options": {...}}``: build the app (nothing touches
  the store yet), answer ``armed`` and block on stdin: the barrier.
* ``go``: start the app at once (``app.create()``: migrations, table creation, static
  rows), schedule two instances of a dynamic task (``once-INDEX`` due now,
  ``keep-INDEX`` hourly), run the poll loop until ``once-INDEX`` has executed somewhere,
  shut down and answer ``report``: whether it all worked, which instances it executed,
  timings, and every WARNING-or-worse log record.

End of stdin ends the process.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

# Everything a start-up touches is imported before the barrier, so that leaving it the
# processes race on the store, not on the import system.
import pyncette.sql.connect
from pyncette import Context, Pyncette
from pyncette.dynamodb import dynamodb_repository
from pyncette.mysql import mysql_repository
from pyncette.postgres import postgres_repository
from pyncette.redis import redis_repository
from pyncette.repository import Repository
from pyncette.sqlite import sqlite_repository

import pyncette.sql.migrations  # noqa: F401  isort: skip
import alembic.command  # noqa: F401  isort: skip

FACTORIES: dict[str, Callable[..., AbstractAsyncContextManager[Repository]]] = {
    "sqlite": sqlite_repository,
    "postgres": postgres_repository,
    "mysql": mysql_repository,
    "redis": redis_repository,
    "redis_cluster": redis_repository,
    "dynamodb": dynamodb_repository,
}
STATIC = "storm-static"
TEMPLATE = "storm-jobs"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def say(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


async def one_round(index: int, app: Pyncette, executed: list[str], deadline: float) -> float:
    """Start, schedule, run until this process's one-off instance ran; the start-up time."""
    jobs = app.tasks[TEMPLATE]
    static = app.tasks[STATIC]
    began = time.monotonic()
    async with app.create() as ctx:
        startup = time.monotonic() - began
        loop = asyncio.ensure_future(ctx.run())
        try:
            now = datetime.datetime.now(datetime.UTC)
            await ctx.schedule_task(jobs, f"once-{index}", execute_at=now)
            await ctx.schedule_task(jobs, f"keep-{index}", interval=datetime.timedelta(hours=1))
            if await ctx.get_task(static) is None:
                raise AssertionError(f"the row of static task {STATIC!r} is missing")
            while await ctx.get_task(jobs, f"once-{index}") is not None:
                if loop.done():
                    loop.result()
                    raise AssertionError("the poll loop stopped")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"once-{index} did not run")
                await asyncio.sleep(0.02)
        finally:
            ctx.shutdown()
            await loop
    return startup


def build(config: dict[str, Any], executed: list[str]) -> Pyncette:
    app = Pyncette(
        repository_factory=FACTORIES[config["backend"]],
        poll_interval=datetime.timedelta(seconds=0.05),
        **config["options"],
    )

    @app.task(name=STATIC, interval=datetime.timedelta(hours=1))
    async def static(context: Context) -> None:
        return None

    @app.dynamic_task(name=TEMPLATE)
    async def jobs(context: Context) -> None:
        executed.append(context.task.name)

    return app


def main() -> None:
    index = int(sys.argv[1])
    collect = Collect()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger().addHandler(collect)
    say("ready", index=index)
    for line in sys.stdin:
        config = json.loads(line)
        if config.get("cmd") != "arm":
            raise SystemExit(f"unexpected command {line!r}")
        executed: list[str] = []
        app = build(config, executed)
        collect.records.clear()
        say("armed", index=index)
        if sys.stdin.readline().strip() != "go":
            return
        released_at = time.time()
        began = time.monotonic()
        timeout = float(config.get("timeout", 60))
        report: dict[str, Any] = {"index": index, "released_at": released_at}
        try:
            startup = asyncio.run(
                asyncio.wait_for(one_round(index, app, executed, began + timeout), timeout + 5)
            )
            report.update(ok=True, startup_s=startup)
        except BaseException as exc:
            report.update(ok=False, error="".join(traceback.format_exception(exc))[-4000:])
        report.update(
            executed=executed, total_s=time.monotonic() - began, logs=list(collect.records)
        )
        say("report", **report)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # No interpreter teardown: the rounds' worker threads (DynamoDB's boto3 calls) would
    # hold the exit up for seconds, and the test waits for every process to end.
    os._exit(0)
