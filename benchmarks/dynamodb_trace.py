"""Record a drain on a DynamoDB endpoint and price it (see :mod:`benchmarks.dynamodb_accounting`).

``python -m benchmarks.dynamodb_trace --endpoint http://127.0.0.1:5000 -n 2000``

Registers ``-n`` one-off instances of one dynamic task, all due, on a fresh partition
prefix of ``--table``, runs one app until every instance has executed, and prints, per
plan, requests, write units and read units per execution. The set-up's requests are
not counted. Meant for a local server (moto, DynamoDB Local); against AWS it writes and
deletes ``-n`` items and is billed for them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from benchmarks.dynamodb_accounting import PLANS, Recorder, TracedRepository, executions, project
from pyncette.dynamodb import dynamodb_repository
from pyncette.dynamodb.repository import DynamoDBRepository
from pyncette.repository import Repository


async def drain(
    endpoint: str, table: str, n: int, batch_size: int, recorder: Recorder
) -> tuple[int, float]:
    """Run the drain; the executions seen and the seconds from start to the last one."""
    from pyncette import Context, Pyncette  # the app imports backends lazily too

    @asynccontextmanager
    async def traced(**options: Any) -> AsyncIterator[Repository]:
        async with dynamodb_repository(**options) as repository:
            if not isinstance(repository, DynamoDBRepository):
                raise TypeError(f"expected a DynamoDBRepository, got {repository!r}")
            # The trace is priced write by write (the batched plans are projected from
            # it), so the repository sends one item per request even where it could batch.
            repository.statements = None
            recorder.attach(repository.client)
            yield TracedRepository(repository)

    app = Pyncette(
        repository_factory=traced,
        dynamodb_endpoint=endpoint,
        dynamodb_region_name="us-east-1",
        dynamodb_table_name=table,
        dynamodb_partition_prefix=f"trace{uuid.uuid4().hex[:8]}",
        batch_size=batch_size,
        concurrency_limit=batch_size,
        poll_interval=datetime.timedelta(seconds=1),
    )
    seen: list[float] = []
    holder: dict[str, Any] = {}

    @app.dynamic_task(name="drain_trace")
    async def run_one(context: Context) -> None:
        seen.append(time.perf_counter())
        if len(seen) >= n:
            holder["ctx"].shutdown()

    async with app.create() as ctx:
        holder["ctx"] = ctx
        recorder.recording = False
        due = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        await ctx.schedule_tasks(run_one, {f"i{i:07d}": {"execute_at": due} for i in range(n)})
        recorder.recording = True
        started = time.perf_counter()
        await ctx.run()
    return len(seen), (seen[-1] - started) if seen else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="DynamoDB endpoint URL")
    parser.add_argument("--table", default="pyncette_trace")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    recorder = Recorder()
    done, seconds = asyncio.run(drain(args.endpoint, args.table, args.n, args.batch_size, recorder))
    committed = executions(recorder.requests)
    rate = done / seconds if seconds else 0.0
    print(f"executions: {done} ({committed} committed), {rate:.0f}/s")
    print(f"{'plan':<14} {'requests':>9} {'req/exec':>9} {'WCU/exec':>9} {'RCU/exec':>9}")
    for plan in PLANS:
        cost = project(recorder.requests, plan)
        requests, writes, reads = cost.per(committed)
        print(f"{plan:<14} {cost.requests:>9} {requests:>9.3f} {writes:>9.2f} {reads:>9.3f}")


if __name__ == "__main__":
    main()
