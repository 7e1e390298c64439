"""An app configured by the environment, as deployments usually are.

``PYNCETTE_CLI_BACKEND``: ``memory`` (default), ``sqlite`` (``PYNCETTE_CLI_SQLITE``: the
file), ``postgres`` (``PYNCETTE_CLI_POSTGRES_URL``) or ``redis``
(``PYNCETTE_CLI_REDIS_URL``); ``PYNCETTE_CLI_TABLE`` names the SQL table or the Redis
namespace.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from pyncette import Context, Pyncette


def backend_options() -> dict[str, Any]:
    backend = os.environ.get("PYNCETTE_CLI_BACKEND", "memory")
    table = os.environ.get("PYNCETTE_CLI_TABLE", "pyncette")
    if backend == "memory":
        return {}
    if backend == "sqlite":
        from pyncette.sqlite import sqlite_repository

        return {
            "repository_factory": sqlite_repository,
            "sqlite_database": os.environ["PYNCETTE_CLI_SQLITE"],
            "sqlite_table_name": table,
        }
    if backend == "postgres":
        from pyncette.postgres import postgres_repository

        return {
            "repository_factory": postgres_repository,
            "postgres_url": os.environ["PYNCETTE_CLI_POSTGRES_URL"],
            "postgres_table_name": table,
        }
    if backend == "redis":
        from pyncette.redis import redis_repository

        return {
            "repository_factory": redis_repository,
            "redis_url": os.environ["PYNCETTE_CLI_REDIS_URL"],
            "redis_namespace": table,
        }
    raise ValueError(f"unknown PYNCETTE_CLI_BACKEND {backend!r}")


app = Pyncette(**backend_options())


@app.task(interval=datetime.timedelta(hours=1))
async def hourly(context: Context) -> None:
    pass


@app.task(schedule="0 3 * * *", timezone="Europe/Paris", region="eu")
async def nightly(context: Context) -> None:
    pass


@app.dynamic_task(lease_duration=datetime.timedelta(seconds=30))
async def reminder(context: Context) -> None:
    pass


@app.partitioned_task(partition_count=4)
async def shard(context: Context) -> None:
    pass
