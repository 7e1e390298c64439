"""Multi-process contention: ``python -m benchmarks contention --backend B --processes 1,2,4,8``.

For each process count N, two runs against one fresh shared store:

* **drain** -- a separate process registers ``-n`` due one-off instances, then N
  processes start together and drain them, each exiting after ``--idle-exit`` s without
  work;
* **steady** -- N processes run ``--steady-n`` interval instances every ``--interval`` s for
  ``--duration`` s (the first process registers them in waves over the first interval).

Each process writes a log of its executions (instance name, scheduled time, start time).
From the logs: **duplicates** (one scheduled run of one instance executed more than once,
across all processes; must be 0), missing runs (drain), and start lateness (start -
scheduled time) p50 / p99. From each process's counting repository: **wasted claims**,
the claims that returned no row plus the rows claimed whose commit was refused as stale
(claimed but lost), and repository calls per execution.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

LogEntry = Sequence[Any]
"""``[name, scheduled_at epoch seconds, start epoch seconds]``."""


def duplicates(logs: Iterable[Iterable[LogEntry]]) -> int:
    """Executions beyond the first of each ``(name, scheduled_at)``, over all logs."""
    seen = Counter((entry[0], entry[1]) for log in logs for entry in log)
    return sum(count - 1 for count in seen.values())


def percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lateness_ms(
    logs: Iterable[Iterable[LogEntry]],
    due_from: float = float("-inf"),
    floor: float = float("-inf"),
) -> dict[str, float | None]:
    """Start lateness (start - the later of its scheduled time and ``floor``) of the runs
    scheduled at or after ``due_from``: p50, p99, max."""
    late = sorted(
        (entry[2] - max(entry[1], floor)) * 1000
        for log in logs
        for entry in log
        if entry[1] >= due_from
    )
    return {
        "p50": percentile(late, 0.5),
        "p99": percentile(late, 0.99),
        "max": late[-1] if late else None,
    }


def merge_counts(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counting repository's figures summed over processes."""
    total: Counter[str] = Counter()
    for result in results:
        counts = result.get("counts") or {}
        for key in ("executions", "requests", "claimed", "empty_claims", "stale_commits"):
            total[key] += counts.get(key) or 0
        total["claims"] += (counts.get("calls") or {}).get("claim", 0)
    executions = total["executions"]
    return {
        **total,
        "wasted_claims": total["empty_claims"] + total["stale_commits"],
        "requests_per_execution": total["requests"] / executions if executions else None,
    }


def run_processes(configs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    from benchmarks.cli import OURS, finish_worker, start_worker

    started = [start_worker(OURS, config) for config in configs]
    return [finish_worker(process, path, timeout) for process, path in started]


def read_logs(paths: Sequence[str]) -> list[list[LogEntry]]:
    logs = []
    for path in paths:
        with open(path) as source:
            logs.append(json.load(source)["log"] or [])
    return logs


def drain_once(services: Any, args: argparse.Namespace, backend: str, n: int) -> dict[str, Any]:
    from benchmarks.cli import OURS, base_config, run_worker

    with services.store(backend) as options, tempfile.TemporaryDirectory() as folder:
        common = {**base_config(args, backend, OURS), "options": options, "n": args.n}
        run_worker(OURS, {**common, "scenario": "setup", "count": False})
        start_at = time.time() + 3.0  # let every process import and connect first
        paths = [os.path.join(folder, f"{index}.json") for index in range(n)]
        configs = [
            {
                **common,
                "scenario": "drain",
                "setup": False,
                "server_cpu": False,
                "start_at": start_at,
                "idle_exit": args.idle_exit,
                "timeout": args.timeout,
                "out": path,
            }
            for path in paths
        ]
        results = run_processes(configs, args.timeout + 120)
        logs = read_logs(paths)
    runs = {(entry[0], entry[1]) for log in logs for entry in log}
    starts = [entry[2] for log in logs for entry in log]
    span = max(starts) - min(starts) if starts else 0.0
    executions = len(starts)
    return {
        "processes": n,
        "executions": executions,
        "duplicates": duplicates(logs),
        "missing": args.n - len({name for name, _ in runs}),
        "rate": (executions - 1) / span if span else None,
        "per_process": [len(log) for log in logs],
        # all were due before the processes started: lateness counts from the start
        "lateness_ms": lateness_ms(logs, floor=start_at),
        **merge_counts(results),
    }


def steady_once(services: Any, args: argparse.Namespace, backend: str, n: int) -> dict[str, Any]:
    from benchmarks.cli import OURS, base_config

    with services.store(backend) as options, tempfile.TemporaryDirectory() as folder:
        common = {**base_config(args, backend, OURS), "options": options, "n": args.steady_n}
        start_at = time.time() + 3.0
        paths = [os.path.join(folder, f"{index}.json") for index in range(n)]
        configs = [
            {
                **common,
                "scenario": "steady",
                "setup": index == 0,
                "server_cpu": False,
                "start_at": start_at,
                "interval": args.interval,
                "duration": args.duration,
                "waves": args.waves,
                "out": path,
            }
            for index, path in enumerate(paths)
        ]
        results = run_processes(configs, args.duration + 600)
        logs = read_logs(paths)
    # measured from the second interval after the first run (once every instance is
    # registered: processes may start later than ``start_at`` on a busy machine)
    first = min((entry[1] for log in logs for entry in log), default=start_at)
    due_from = first + args.interval
    until = first + args.duration
    window = until - due_from
    achieved = sum(1 for log in logs for entry in log if due_from <= entry[2] <= until)
    return {
        "processes": n,
        "executions": sum(len(log) for log in logs),
        "duplicates": duplicates(logs),
        "demanded_per_s": args.steady_n / args.interval,
        "achieved_per_s": achieved / window if window > 0 else None,
        "per_process": [len(log) for log in logs],
        "lateness_ms": lateness_ms(logs, due_from),
        **merge_counts(results),
    }


def scenario_contention(services: Any, args: argparse.Namespace, report: Any) -> None:
    from benchmarks.cli import fmt, noted
    from benchmarks.services import SHARED

    for backend in args.backends:
        if backend not in SHARED:
            print(f"\n(contention skipped for {backend}: its store is private to one process)")
            continue
        for mode, once in (("drain", drain_once), ("steady", steady_once)):
            size = args.n if mode == "drain" else args.steady_n
            extra = "" if mode == "drain" else f" every {args.interval:g} s"
            print(f"\n### contention, {mode} — {backend}, {size} instances{extra}\n")
            print(
                "| run | processes | executions/s | per process | duplicates | missing |"
                " wasted claims (empty + lost) | calls/exec | lateness p50 ms | p99 ms |"
            )
            print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
            wasted: dict[int, list[int]] = {}
            for rep in range(args.repeat):
                for processes in args.processes:
                    with noted(report, f"contention {mode} {backend} x{processes}"):
                        result = once(services, args, backend, processes)
                        report.record(f"contention-{mode}", backend, "ours", result)
                        if result["duplicates"] or result.get("missing"):
                            report.fail(
                                f"contention {mode} {backend} x{processes}: "
                                f"{result['duplicates']} duplicates, "
                                f"{result.get('missing', 0)} missing"
                            )
                        wasted.setdefault(processes, []).append(result["wasted_claims"])
                        rate = result.get("rate") or result.get("achieved_per_s")
                        late = result["lateness_ms"]
                        print(
                            f"| {rep + 1} | {processes} | {fmt(rate)} | "
                            f"{result['per_process']} | {result['duplicates']} | "
                            f"{fmt(result.get('missing'))} | {result['wasted_claims']} "
                            f"({result['empty_claims']} + {result['stale_commits']}) | "
                            f"{fmt(result['requests_per_execution'], 4)} | "
                            f"{fmt(late['p50'], 1)} | {fmt(late['p99'], 1)} |",
                            flush=True,
                        )
            for processes, values in wasted.items():
                print(f"- {processes} processes: median wasted claims {statistics.median(values)}")
