"""Python function calls per execution, a cost figure that does not depend on the load.

``python -m benchmarks.calls --backend sqlite`` drains ``--small`` and then ``--large``
due one-off instances of one dynamic task, each in a fresh app and store, with
``cProfile`` counting the calls made in this process from the moment the loop starts
until the last execution; the difference divided by the difference in size is the calls
one more execution costs (start-up and the final idle poll cancel out). Calls made in
other threads (aiosqlite's, boto3's pool) are not counted. ``--top K`` also lists the K
functions called most often per execution.

Stores: a SQLite file in a temporary folder; PostgreSQL, MariaDB and Redis on localhost
(the tests' defaults), each run in a table or namespace of its own, removed afterwards
only for SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import pstats
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pyncette import Context, Pyncette

UTC = datetime.UTC


def backend_options(backend: str, folder: Path) -> dict[str, Any]:
    table = f"calls_{uuid.uuid4().hex[:12]}"
    if backend == "memory":
        return {}
    if backend == "sqlite":
        from pyncette.sqlite import sqlite_repository

        return {"repository_factory": sqlite_repository, "sqlite_database": str(folder / "c.db")}
    if backend == "postgres":
        from pyncette.postgres import postgres_repository

        return {
            "repository_factory": postgres_repository,
            "postgres_url": "postgresql://postgres@127.0.0.1:5432/test",
            "postgres_table_name": table,
        }
    if backend == "mysql":
        from pyncette.mysql import mysql_repository

        return {
            "repository_factory": mysql_repository,
            "mysql_host": "127.0.0.1",
            "mysql_user": "root",
            "mysql_database": "test",
            "mysql_table_name": table,
        }
    if backend == "redis":
        from pyncette.redis import redis_repository

        return {
            "repository_factory": redis_repository,
            "redis_url": "redis://127.0.0.1:6379",
            "redis_namespace": table,
        }
    raise SystemExit(f"unknown backend {backend!r}")


async def drain(backend: str, n: int) -> pstats.Stats:
    """Drain ``n`` due one-offs; the profile of the loop, from its start to the last one."""
    with tempfile.TemporaryDirectory() as folder:
        app = Pyncette(
            batch_size=100,
            concurrency_limit=100,
            poll_interval=datetime.timedelta(seconds=0.05),
            **backend_options(backend, Path(folder)),
        )
        done = asyncio.Event()
        ran = 0

        @app.dynamic_task()
        async def job(context: Context) -> None:
            nonlocal ran
            ran += 1
            if ran >= n:
                done.set()

        async with app.create() as ctx:
            due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
            await ctx.schedule_tasks(job, {f"i{i}": {"execute_at": due} for i in range(n)})
            profile = cProfile.Profile()
            profile.enable()
            loop = asyncio.create_task(ctx.run())
            await done.wait()
            profile.disable()
            ctx.shutdown()
            await loop
        return pstats.Stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="memory")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument("--top", type=int, default=0, help="list the K most called functions")
    args = parser.parse_args()
    small = asyncio.run(drain(args.backend, args.small))
    large = asyncio.run(drain(args.backend, args.large))
    extra = args.large - args.small
    per_execution = (large.total_calls - small.total_calls) / extra  # type: ignore[attr-defined]
    print(f"{args.backend}: {per_execution:.1f} Python calls per execution")
    if args.top:
        before: dict[Any, Any] = small.stats  # type: ignore[attr-defined]
        after: dict[Any, Any] = large.stats  # type: ignore[attr-defined]
        rows = []
        for key, (_, calls, *_rest) in after.items():
            rows.append(((calls - before.get(key, (0, 0))[1]) / extra, key))
        for count, (file, line, name) in sorted(rows, reverse=True)[: args.top]:
            print(f"{count:7.2f}  {name} ({Path(file).name}:{line})")


if __name__ == "__main__":
    main()
