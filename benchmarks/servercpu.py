"""Server CPU spent on one benchmark process's requests, sampled before and after a window.

Imported by ``worker.py`` as the sibling module ``servercpu`` (it imports nothing from the
``benchmarks`` package). ``pg_stat_statements`` is not loaded on the shared PostgreSQL
server and enabling it needs a restart, so CPU is read from ``/proc`` instead:

* PostgreSQL: user + system time of the backend processes connected to this run's private
  database (``pg_stat_activity``), i.e. only our connections' statement execution; the
  WAL writer, checkpointer and background writer are not counted;
* MariaDB: user + system time of the server threads (``information_schema.PROCESSLIST``
  ``TID``) of the connections to this run's private database; InnoDB's background
  threads (purge, page flushing) are not counted;
* Redis: the sum of ``usec`` over ``INFO commandstats`` (time inside commands) and the
  ``redis-server`` process's user + system time (with its event loop and I/O); both are
  server-wide, so other clients of the shared server add to them;
* Redis Cluster: the same two figures summed over the cluster's masters (``CLUSTER
  NODES`` asked of the node in ``redis_url``); the cluster is the harness's own, so only
  this run's requests count (plus the nodes' cluster-bus gossip);
* DynamoDB: the ``moto_server`` process this harness started (only our requests);
* SQLite and memory: no server (the work is in the benchmark process itself).
"""

from __future__ import annotations

import os
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def thread_stat_path(tid: int) -> str:
    """``/proc/<process>/task/<tid>/stat``: the thread's own times (``/proc/<tid>/stat``
    would give the whole process's)."""
    with open(f"/proc/{tid}/status") as source:
        for line in source:
            if line.startswith("Tgid:"):
                return f"/proc/{int(line.split()[1])}/task/{tid}/stat"
    raise OSError(f"no Tgid for {tid}")


def proc_cpu_seconds(pid: int, *, thread: bool = False) -> float | None:
    """User + system CPU seconds of process ``pid`` (or of thread ``pid`` alone, when
    ``thread``); ``None`` if it is gone."""
    try:
        path = thread_stat_path(pid) if thread else f"/proc/{pid}/stat"
        with open(path) as source:
            text = source.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sum_deltas(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU spent between two samples of per-process counters (a process that appeared in
    between counts from zero; one that vanished is lost)."""
    return sum(value - before.get(key, 0.0) for key, value in after.items())


async def redis_counters(url: str) -> tuple[float, int]:
    """Microseconds spent inside commands so far (``INFO commandstats``) and the pid of
    the ``redis-server`` at ``url``."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        server = await client.info("server")
    finally:
        await client.aclose()
    return float(sum(entry["usec"] for entry in stats.values())), int(server["process_id"])


async def cluster_masters(url: str) -> list[str]:
    """The URLs of the masters of the cluster that the node at ``url`` belongs to."""
    import redis.asyncio

    client: Any = redis.asyncio.Redis.from_url(url)
    try:
        text = (await client.execute_command("CLUSTER", "NODES")).decode()
    finally:
        await client.aclose()
    masters = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and "master" in fields[2].split(","):
            address = fields[1].split("@")[0]  # host:port@bus-port[,hostname]
            masters.append(f"redis://{address}")
    return masters


async def sample(backend: str, options: dict[str, Any], server_pid: int | None) -> dict[str, Any]:
    """Counters to subtract: ``{"procs": {pid: seconds}, "commands_us": float}``."""
    procs: dict[str, float] = {}
    result: dict[str, Any] = {"procs": procs}
    pids: list[int] = []
    if backend == "postgres":
        import asyncpg

        connection = await asyncpg.connect(options["postgres_url"])
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()
        pids = [row[0] for row in rows]
    elif backend == "mysql":
        import asyncmy

        connection = await asyncmy.connect(
            host=options["mysql_host"],
            port=options["mysql_port"],
            user=options["mysql_user"],
            password=options.get("mysql_password", ""),
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(
                    "SELECT TID FROM information_schema.PROCESSLIST "
                    "WHERE DB = %s AND ID <> CONNECTION_ID()",
                    (options["mysql_database"],),
                )
                pids = [int(row[0]) for row in await cursor.fetchall()]
        finally:
            connection.close()
    elif backend == "redis":
        commands_us, pid = await redis_counters(options["redis_url"])
        result["commands_us"] = commands_us
        pids = [pid]
    elif backend == "redis_cluster":
        commands_us = 0.0
        for url in await cluster_masters(options["redis_url"]):
            node_us, pid = await redis_counters(url)
            commands_us += node_us
            pids.append(pid)
        result["commands_us"] = commands_us
    elif backend in ("dynamodb", "dynamodb_local") and server_pid is not None:
        pids = [server_pid]
    for pid in pids:
        seconds = proc_cpu_seconds(pid, thread=backend == "mysql")
        if seconds is not None:
            procs[str(pid)] = seconds
    return result


def server_cpu(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """Seconds of server CPU between two :func:`sample` calls."""
    commands = None
    if "commands_us" in after:
        commands = (after["commands_us"] - before.get("commands_us", 0.0)) / 1e6
    procs = sum_deltas(before["procs"], after["procs"]) if after["procs"] else None
    return {"process_s": procs, "commands_s": commands}
