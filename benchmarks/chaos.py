"""``python -m benchmarks chaos``: the long form of the chaos scenarios.

Scenarios 1-3 (this module) run three processes of the chaos app (tests/chaos) on a
backend for ``--seconds`` while killing them (``kill``), crashing and restarting the
database server (``restart``) or cutting, stalling and slowing their connections
(``proxy``); then they check that no run executed twice and none was lost, and print
one table row per scenario and backend::

    .venv/bin/python -m benchmarks chaos --backend all --seconds 60

Scenarios 4-7 (``storm``, ``skew``, ``hostile``, ``overload``) live in
:mod:`benchmarks.chaos_storm`; this command hands them over to it.

Exit status 1 if any run found a problem (each is printed below the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

OURS = ("kill", "restart", "proxy")
THEIRS = ("storm", "skew", "hostile", "overload")
BACKENDS = ("sqlite", "postgres", "mysql", "redis", "redis_cluster", "dynamodb", "dynamodb_local")
APPLIES = {
    "kill": BACKENDS,
    "restart": ("postgres", "mysql", "redis"),
    "proxy": ("postgres", "mysql", "redis", "dynamodb", "dynamodb_local"),
}
COLUMNS = (
    ("scenario", "scenario"),
    ("backend", "backend"),
    ("seconds", "s"),
    ("kills", "kills"),
    ("outages", "restarts"),
    ("proxy_actions", "proxy actions"),
    ("processes", "processes"),
    ("runs_checked", "runs checked"),
    ("executions", "executions"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
    ("amo_given_up", "at-most-once given up"),
    ("repeats", "at-least-once repeats"),
    ("stale_starts", "stale starts"),
    ("lease_violations", "lease violations"),
    ("takeovers", "takeovers"),
    ("takeover_p50", "takeover p50 s"),
    ("worst_takeover", "worst takeover s"),
    ("timeouts", "calls timed out"),
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", default="all", help=f"comma-separated or 'all': {', '.join(OURS)}"
    )
    parser.add_argument(
        "--backend", default="all", help=f"comma-separated or 'all': {', '.join(BACKENDS)}"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos window per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario and backend")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--lease", type=float, default=3.0, help="lease_duration, seconds")
    parser.add_argument("--poll", type=float, default=0.2, help="poll_interval, seconds")
    parser.add_argument("--instances", type=int, default=200, help="dynamic instances")
    parser.add_argument("--interval", type=float, default=2.0, help="their interval, seconds")
    parser.add_argument("--oneoffs", type=int, default=60, help="one-off instances per run")
    parser.add_argument("--outage", type=float, help="restart: seconds down (lease + 1.5)")
    parser.add_argument("--tolerance", type=float, default=3.0, help="takeover slack, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="keep each run's logs under DIR")
    parser.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    args = parser.parse_args(argv)
    args.scenarios = list(OURS) if args.scenario == "all" else args.scenario.split(",")
    unknown = [s for s in args.scenarios if s not in OURS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(OURS + THEIRS)}")
    args.backends = list(BACKENDS) if args.backend == "all" else args.backend.split(",")
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return args


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value % 1 else f"{value:.0f}"
    return str(value)


def run_all(args: argparse.Namespace) -> int:
    from chaos.driver import Scenario, run
    from chaos.stores import Unavailable
    from chaos.workload import Workload

    workload = Workload(
        lease=args.lease,
        poll=args.poll,
        dynamic=args.instances,
        interval=args.interval,
        oneoffs=args.oneoffs,
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    print(
        f"pyncette chaos — {stamp} UTC, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; lease {args.lease:g} s, poll {args.poll:g} s, "
        f"{args.processes} processes, {args.instances} instances every {args.interval:g} s, "
        f"{args.oneoffs} one-offs, takeover tolerance {args.tolerance:g} s\n",
        flush=True,
    )
    print("| " + " | ".join(title for _, title in COLUMNS) + " | result |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    failed: list[str] = []
    for scenario in args.scenarios:
        for backend in args.backends:
            if backend not in APPLIES[scenario]:
                continue
            for attempt in range(args.repeat):
                spec = Scenario(
                    scenario,
                    backend,
                    args.seconds,
                    workload=workload,
                    processes=args.processes,
                    seed=args.seed + attempt,
                    tolerance=args.tolerance,
                    outage=args.outage if args.outage is not None else args.lease + 1.5,
                    settle_timeout=max(60.0, args.lease * 10),
                )
                directory = Path(tempfile.mkdtemp(prefix=f"chaos-{scenario}-{backend}-"))
                if args.keep:
                    keep = Path(args.keep) / f"{scenario}-{backend}-{attempt + 1}"
                    keep.mkdir(parents=True, exist_ok=True)
                    directory = keep
                started = time.monotonic()
                try:
                    report = run(spec, directory)
                except Unavailable as missing:
                    print(f"| {scenario} | {backend} | skipped: {missing} |", flush=True)
                    continue
                except Exception as error:  # the run could not be carried out
                    failed.append(f"{scenario} on {backend}: {type(error).__name__}: {error}")
                    print(f"| {scenario} | {backend} | error: {error} |", flush=True)
                    continue
                finally:
                    if not args.keep:
                        _remove(directory)
                data = report.to_json()
                data["wall_s"] = round(time.monotonic() - started, 1)
                row = [cell(data[key]) for key, _ in COLUMNS]
                verdict = (
                    "ok"
                    if report.ok
                    else "PROBLEMS: "
                    + ", ".join(f"{kind} {count}" for kind, count in report.kinds.items())
                )
                print("| " + " | ".join(row) + f" | {verdict} |", flush=True)
                if not report.ok:
                    failed.append(report.summary())
                if args.json:
                    with open(args.json, "a", encoding="utf-8") as out:
                        out.write(json.dumps(data) + "\n")
    for summary in failed:
        print("\n" + summary, flush=True)
    return 1 if failed else 0


def _remove(directory: Path) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str]) -> int:
    """``argv`` without the ``chaos`` word."""
    for index, word in enumerate(argv):
        value = argv[index + 1] if word == "--scenario" and index + 1 < len(argv) else None
        if word.startswith("--scenario="):
            value = word.split("=", 1)[1]
        if value in THEIRS:
            from benchmarks import chaos_storm

            return chaos_storm.main(argv)
    return run_all(parse(argv))
