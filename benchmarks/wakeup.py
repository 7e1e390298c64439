"""Instant wake-ups: ``python -m benchmarks wakeup --backend postgres,redis -n 100``.

Two processes on one fresh store: a *worker* polls every ``--poll-interval`` seconds
(1 s by default), and a *source* schedules ``-n`` one-off instances due at once, one
every 0.1-0.3 s. The figure is each run's start lateness on the worker (start minus its
scheduled time, both read from the same machine's clock): without wake-ups it is up to
a poll interval; with ``instant_wakeups=True`` the source's ``NOTIFY`` or ``PUBLISH``
wakes the worker at once. The two settings alternate, ``--repeat`` pairs of runs. On a
backend without a wake-up channel both rows are polling (a control).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from benchmarks.contention import lateness_ms, read_logs

START_DELAY = 3.0
"""Seconds for both processes to import, connect and start listening before the first run."""


def wakeup_once(
    services: Any, args: argparse.Namespace, backend: str, instant: bool, seed: int
) -> dict[str, Any]:
    from benchmarks.cli import OURS, base_config, finish_worker, start_worker

    with services.store(backend) as options, tempfile.TemporaryDirectory() as folder:
        common = {
            **base_config(args, backend, OURS),
            "options": options,
            "count": False,
            "server_cpu": False,
            "instant_wakeups": instant,
            "start_at": time.time() + START_DELAY,
        }
        span = args.n * 0.3 + 2 * args.poll_interval + 2.0  # the source's longest run, then some
        out = os.path.join(folder, "worker.json")
        worker = start_worker(
            OURS, {**common, "scenario": "wakeup_worker", "duration": span, "out": out}
        )
        source = start_worker(
            OURS, {**common, "scenario": "wakeup_source", "n": args.n, "seed": seed}
        )
        finish_worker(*source, START_DELAY + span + 120)
        finish_worker(*worker, START_DELAY + span + 120)
        (log,) = read_logs([out])
    return {
        "instant_wakeups": instant,
        "executions": len(log),
        "missing": args.n - len({entry[0] for entry in log}),
        "lateness_ms": lateness_ms([log]),
    }


def scenario_wakeup(services: Any, args: argparse.Namespace, report: Any) -> None:
    from benchmarks.cli import fmt, noted
    from benchmarks.services import SHARED

    for backend in args.backends:
        if backend not in SHARED:
            print(f"\n(wakeup skipped for {backend}: its store is private to one process)")
            continue
        print(
            f"\n### wake-ups — {backend}, {args.n} runs scheduled for now by another process,"
            f" poll interval {args.poll_interval:g} s\n"
        )
        print(
            "| run | instant_wakeups | executions | missing | lateness p50 ms | p99 ms | max ms |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        medians: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.repeat):
            for instant in (False, True):
                with noted(report, f"wakeup {backend} instant={instant}"):
                    result = wakeup_once(services, args, backend, instant, seed=rep)
                    report.record("wakeup", backend, "ours", result)
                    if result["missing"]:
                        report.fail(f"wakeup {backend}: {result['missing']} runs never started")
                    late = result["lateness_ms"]
                    if late["p50"] is not None:
                        medians[instant].append(late["p50"])
                    print(
                        f"| {rep + 1} | {instant} | {result['executions']} | "
                        f"{result['missing']} | {fmt(late['p50'], 1)} | {fmt(late['p99'], 1)} | "
                        f"{fmt(late['max'], 1)} |",
                        flush=True,
                    )
        if medians[False] and medians[True]:
            print(
                f"\nmedian p50 lateness: polling {statistics.median(medians[False]):.1f} ms, "
                f"instant {statistics.median(medians[True]):.1f} ms",
                flush=True,
            )
