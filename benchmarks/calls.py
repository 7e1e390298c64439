"""Python function calls per execution, a cost figure that does not depend on the load.

``python -m benchmarks.calls --backend sqlite`` drains ``--small`` and then ``--large``
due one-off instances of one dynamic task, each in a fresh app and store, with
``cProfile`` counting the calls made in this process from the moment the loop starts
until the last execution; the difference divided by the difference in size is the calls
one more execution costs (start-up and the final idle poll cancel out). Calls made in
other threads (aiosqlite's, boto3's pool) are not counted. ``--top K`` also lists the K
functions called most often per execution.

Each drain gets a fresh store from the harness (``benchmarks.services``) and the app the
benchmark worker builds (``benchmarks.worker.make_app``), polling every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import os
import pstats
from pathlib import Path
from typing import Any

from benchmarks import worker
from benchmarks.services import AWS_ENV, DYNAMODB, Services
from pyncette import Context

UTC = datetime.UTC


async def drain(options: dict[str, Any], backend: str, n: int) -> pstats.Stats:
    """Drain ``n`` due one-offs; the profile of the loop, from its start to the last one."""
    app = worker.make_app({"backend": backend, "options": options, "poll_interval": 0.05})
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
    if args.backend in DYNAMODB:
        os.environ.update(AWS_ENV)
    services = Services()
    try:
        profiles = []
        for n in (args.small, args.large):
            with services.store(args.backend) as options:
                profiles.append(asyncio.run(drain(options, args.backend, n)))
    finally:
        services.close()
    small, large = profiles
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
