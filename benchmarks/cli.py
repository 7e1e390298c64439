"""Command line: ``python -m benchmarks SCENARIO --backend B [options]``.

Each measurement runs :mod:`benchmarks.worker` in a fresh subprocess against a fresh
store (see :mod:`benchmarks.services`). ``--compare`` alternates this project and
Pyncette 1.1.0 (A B A B ...) on the same server and prints each pair's ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.services import (
    AWS_ENV,
    BACKENDS,
    CHOICES,
    DYNAMODB,
    IN_PROCESS_CEILINGS,
    NO_PYNCETTE11,
    SHARED,
    Services,
)

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
CEILING = HERE / "ceiling.py"
OURS = sys.executable
THEIRS = str(HERE / ".venv-pyncette11" / "bin" / "python")


class BenchmarkFailure(Exception):
    """A correctness check failed (duplicates, missing runs) or a worker crashed."""


# -- running workers ---------------------------------------------------------------------


def start_worker(
    python: str, config: dict[str, Any], script: Path = WORKER
) -> tuple[subprocess.Popen[str], str]:
    fd, path = tempfile.mkstemp(prefix="pyncette-bench-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(config, out)
    env = {**os.environ, **AWS_ENV, "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        [python, str(script), path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # never import this checkout's sources by accident
    )
    return process, path


def finish_worker(process: subprocess.Popen[str], path: str, timeout: float) -> dict[str, Any]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise BenchmarkFailure(
            f"worker timed out after {timeout:.0f} s:\n{stderr[-3000:]}"
        ) from None
    finally:
        os.unlink(path)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            if stderr.strip():
                result["stderr_tail"] = stderr[-2000:]
            return result
    raise BenchmarkFailure(f"worker exited {process.returncode}:\n{stderr[-3000:]}")


def run_worker(
    python: str, config: dict[str, Any], timeout: float = 900, script: Path = WORKER
) -> dict[str, Any]:
    process, path = start_worker(python, config, script)
    return finish_worker(process, path, timeout)


def compare_impossible(args: argparse.Namespace, backend: str) -> bool:
    """``--compare`` on a backend Pyncette 1.1.0 cannot use: say so, and skip it."""
    if args.compare and backend in NO_PYNCETTE11:
        print(
            f"\n({args.scenario} --compare skipped for {backend}: Pyncette 1.1.0 cannot "
            "use it; run without --compare to measure this project alone)",
            flush=True,
        )
        return True
    return False


def flavour_of(python: str) -> str:
    return "pyncette11" if python == THEIRS else "ours"


def label_of(python: str) -> str:
    return "Pyncette 1.1.0" if python == THEIRS else "this project"


# -- results -----------------------------------------------------------------------------


class Report:
    """Collects rows and failures; prints markdown and optionally appends JSON lines."""

    def __init__(self, json_path: str | None) -> None:
        self.json_path = json_path
        self.failures: list[str] = []

    def record(self, scenario: str, backend: str, who: str, payload: dict[str, Any]) -> None:
        if self.json_path:
            with open(self.json_path, "a") as out:
                row = {"scenario": scenario, "backend": backend, "who": who, **payload}
                out.write(json.dumps(row) + "\n")

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAIL: {message}", flush=True)


def median_ratio(ours: list[float], theirs: list[float]) -> tuple[list[float], float]:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    return ratios, statistics.median(ratios) if ratios else float("nan")


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def pythons(args: argparse.Namespace) -> list[str]:
    if not args.compare:
        return [OURS]
    if not os.path.exists(THEIRS):
        raise SystemExit("Pyncette 1.1.0 venv missing: run benchmarks/setup_pyncette11.sh")
    return [OURS, THEIRS]


def base_config(args: argparse.Namespace, backend: str, python: str) -> dict[str, Any]:
    return {
        "backend": backend,
        "batch_size": args.batch_size,
        "concurrency_limit": args.concurrency_limit,
        "poll_interval": args.poll_interval,
        "run_history": args.run_history,
        "job_sleep": args.job_sleep,
        # Compare mode: both sides use only the 1.x API; alone, we may use our bulk API.
        "api": "compat" if args.compare else "bulk",
        # Alone, count requests and server CPU (kept out of --compare's A/B runs).
        "count": python == OURS and not args.compare and args.count,
        "server_cpu": python == OURS and not args.compare and args.count,
    }


def with_server_pid(services: Services, backend: str, config: dict[str, Any]) -> dict[str, Any]:
    """The DynamoDB server's pid, for DynamoDB runs that measure server CPU."""
    if backend in DYNAMODB and config.get("server_cpu"):
        config["server_pid"] = services.dynamodb_server(backend).process.pid
    return config


@contextmanager
def noted(report: Report, what: str) -> Iterator[None]:
    try:
        yield
    except BenchmarkFailure as exc:
        report.fail(f"{what}: {exc}")


# -- scenarios ---------------------------------------------------------------------------


def drain_once(
    services: Services, args: argparse.Namespace, backend: str, python: str, n: int, **extra: Any
) -> dict[str, Any]:
    with services.store(backend, flavour_of(python)) as options:
        config = {**base_config(args, backend, python), "scenario": "drain", "n": n}
        config.update(options=options, timeout=args.timeout, **extra)
        result = run_worker(
            python, with_server_pid(services, backend, config), timeout=args.timeout + 120
        )
    span = (result["last"] - result["first"]) if result["executions"] > 1 else None
    result["rate"] = (result["executions"] - 1) / span if span else None
    result["missing"] = n - result["unique"]
    return result


def check_correct(report: Report, what: str, python: str, result: dict[str, Any]) -> None:
    problems = result.get("duplicates", 0) or result.get("missing", 0)
    if problems:
        message = f"{what}: {result.get('duplicates')} duplicates, {result.get('missing')} missing"
        if python == OURS:
            report.fail(message)
        else:
            print(f"WARNING (Pyncette 1.1.0): {message}", flush=True)


def scenario_drain(services: Services, args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        if compare_impossible(args, backend):
            continue
        print(f"\n### drain — {backend}, n={args.n}, batch_size={args.batch_size}\n")
        print(
            "| run | package | executions/s | calls/exec | round trips/exec | empty claims |"
            " server CPU µs/exec | client CPU µs/exec | duplicates | missing | setup s |"
            " peak RSS MiB |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        rates: dict[str, list[float]] = {python: [] for python in pythons(args)}
        cpus: list[float | None] = []  # this project's client CPU µs/exec, run by run
        profile_top: list[dict[str, Any]] = []
        with_ceiling = not args.compare and args.ceiling and backend in CEILINGS
        ceilings: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for rep in range(args.repeat):
            for python in pythons(args):
                extra: dict[str, Any] = {}
                if args.profile and python == OURS and rep == 0:
                    extra["profile"] = os.path.join(args.profile, f"drain-{backend}.txt")
                with noted(report, f"drain {backend} {label_of(python)}"):
                    result = drain_once(services, args, backend, python, args.n, **extra)
                    check_correct(report, f"drain {backend} {label_of(python)}", python, result)
                    rates[python].append(result["rate"] or 0.0)
                    if python == OURS:
                        cpus.append(result.get("client_cpu_us"))
                    report.record("drain", backend, flavour_of(python), result)
                    profile_top = result.get("profile_top") or profile_top
                    print(
                        f"| {rep + 1} | {label_of(python)} | {fmt(result['rate'])} | "
                        f"{cost_cells(result)} | {fmt(result.get('client_cpu_us'), 1)} | "
                        f"{result['duplicates']} | {result['missing']} | "
                        f"{fmt(result.get('setup_s'), 2)} | {fmt(result['peak_rss_mib'], 1)} |",
                        flush=True,
                    )
            if with_ceiling:  # right after the drain it is set against (the load drifts)
                ceilings.append(ceiling_runs(services, args, backend, report))
        summarize(rates, "executions/s")
        if with_ceiling:
            print_ceiling(backend, ceilings, rates[OURS], cpus)
        print_profile_top(profile_top)


def cost_cells(result: dict[str, Any]) -> str:
    """Repository calls, driver round trips, empty claims and server CPU per execution."""
    counts = result.get("counts") or {}
    cpu = result.get("server_cpu") or {}
    server = cpu.get("process_us_per_execution")
    if cpu.get("commands_us_per_execution") is not None:  # Redis: also time in commands
        server_text = f"{fmt(server, 1)} ({fmt(cpu['commands_us_per_execution'], 1)} in cmds)"
    else:
        server_text = fmt(server, 1)
    return (
        f"{fmt(counts.get('requests_per_execution'), 4)} | "
        f"{fmt(counts.get('trips_per_execution'), 4)} | "
        f"{fmt(counts.get('empty_claims'))} | {server_text}"
    )


def print_profile_top(entries: list[dict[str, Any]], count: int = 8) -> None:
    if not entries:
        return
    print("\nprofile, top self time (pyinstrument, first run):")
    for entry in entries[:count]:
        print(f"- {entry['share'] * 100:.1f}% {entry['where']}")


CEILINGS = ("sqlite", "postgres", "mysql", "redis", "redis_cluster", *DYNAMODB)
"""Backends with a plain-driver ceiling (benchmarks/ceiling.py)."""


def ceiling_once(
    services: Services, args: argparse.Namespace, backend: str, *, repository: bool = False
) -> dict[str, Any]:
    """One plain-driver drain (``ceiling.py``), or with ``repository`` one drain through
    this project's repository alone (the worker's ``repository_drain``), on a fresh store."""
    with services.store(backend) as options:
        common = {**base_config(args, backend, OURS), "options": options, "n": args.n}
        common.update(count=False, server_cpu=False)
        run_worker(OURS, {**common, "scenario": "setup"})
        if repository:
            alone = {**common, "scenario": "repository_drain"}
            return run_worker(OURS, alone, timeout=args.timeout)
        return run_worker(OURS, common, timeout=args.timeout, script=CEILING)


def ceiling_runs(
    services: Services, args: argparse.Namespace, backend: str, report: Report
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One plain-driver drain and one drain through our repository alone, each checked
    to have drained every row."""
    with noted(report, f"ceiling {backend}"):
        result = ceiling_once(services, args, backend)
        report.record("ceiling", backend, "plain driver", result)
        if result["executions"] != args.n:
            report.fail(f"ceiling {backend}: drained {result['executions']} of {args.n}")
        bare = ceiling_once(services, args, backend, repository=True)
        report.record("ceiling", backend, "repository alone", bare)
        if bare["executions"] != args.n:
            report.fail(f"repository alone {backend}: drained {bare['executions']} of {args.n}")
    return result, bare


def print_ceiling(
    backend: str,
    runs: list[tuple[dict[str, Any], dict[str, Any]]],
    ours: list[float],
    ours_cpu: Sequence[float | None] = (),
) -> None:
    """The plain driver's rate for the same work, our fraction of it, and between the two
    the rate of our repository without the scheduler. Each run of the ceiling and of the
    repository alone followed a drain of ours, so besides the medians each drain is set
    against the ceiling run beside it (per-run fractions, and their median). Where the
    ceiling runs in its own process (SQLite), each drain's CPU time per execution is also
    set against the ceiling run's (``ours_cpu``, run by run): the process's CPU time does
    not count the time it waited for a core, which the clock does."""
    print(
        f"\nceiling — {backend}: the same claims and commits with the plain driver, and "
        "through this project's repository alone (no scheduler)\n"
    )
    print(
        "| run | ceiling executions/s | ceiling client CPU µs/exec | requests/exec |"
        " repository alone executions/s | repository calls/exec | client CPU µs/exec |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    rates: list[float] = []
    alone: list[float] = []
    for rep, (result, bare) in enumerate(runs):
        rates.append(result["rate"] or 0.0)
        alone.append(bare["rate"] or 0.0)
        print(
            f"| {rep + 1} | {fmt(result['rate'])} | {fmt(result.get('client_cpu_us'), 1)} | "
            f"{fmt(result['requests_per_execution'], 4)} | {fmt(bare['rate'])} | "
            f"{fmt(bare['requests_per_execution'], 4)} | {fmt(bare['client_cpu_us'], 1)} |",
            flush=True,
        )
    if rates and ours:
        ceiling = statistics.median(rates)
        fraction = statistics.median(ours) / ceiling if ceiling else float("nan")
        print(
            f"\nmedian ceiling {fmt(ceiling)} executions/s; this project "
            f"{fmt(statistics.median(ours))}: {fraction * 100:.0f}% of the ceiling "
            "(target >= 50%)",
            flush=True,
        )
        repository_rate = statistics.median(alone)
        print(
            f"repository alone {fmt(repository_rate)} executions/s: "
            f"{repository_rate / ceiling * 100:.0f}% of the ceiling; the full drain is "
            f"{statistics.median(ours) / repository_rate * 100:.0f}% of the repository alone",
            flush=True,
        )
        fractions = [mine / theirs for mine, theirs in zip(ours, rates, strict=False) if theirs]
        if len(fractions) > 1:
            print(
                "each drain against the ceiling run beside it: "
                + ", ".join(f"{f * 100:.0f}%" for f in fractions)
                + f"; median {statistics.median(fractions) * 100:.0f}%",
                flush=True,
            )
    if backend in IN_PROCESS_CEILINGS:
        by_cpu = [
            theirs / mine
            for mine, (result, _bare) in zip(ours_cpu, runs, strict=False)
            if mine and (theirs := result.get("client_cpu_us"))
        ]
        if by_cpu:
            print(
                "by CPU time, each drain against the ceiling run beside it (the ceiling's CPU "
                "µs per execution over ours): "
                + ", ".join(f"{f * 100:.0f}%" for f in by_cpu)
                + f"; median {statistics.median(by_cpu) * 100:.0f}%",
                flush=True,
            )


def summarize(values: dict[str, list[float]], unit: str) -> None:
    ours = values.get(OURS, [])
    theirs = values.get(THEIRS, [])
    if ours:
        print(f"\nmedian {unit}, this project: {fmt(statistics.median(ours))}")
    if theirs:
        print(f"median {unit}, Pyncette 1.1.0: {fmt(statistics.median(theirs))}")
        if len(ours) == len(theirs):
            ratios, median = median_ratio(ours, theirs)
            print("pair ratios: " + ", ".join(f"{r:.2f}x" for r in ratios))
            print(f"median ratio: {median:.2f}x", flush=True)


def scenario_steady(services: Services, args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        if compare_impossible(args, backend):
            continue
        print(
            f"\n### steady — {backend}, {args.n} instances every {args.interval:g} s "
            f"for {args.duration:g} s, poll {args.poll_interval:g} s\n"
        )
        print(
            "| run | package | demanded/s | achieved/s | lateness p50 ms | p99 ms | max ms |"
            " calls/exec | round trips/exec | empty claims | server CPU µs/exec | peak RSS MiB |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        achieved: dict[str, list[float]] = {python: [] for python in pythons(args)}
        for rep in range(args.repeat):
            for python in pythons(args):
                with noted(report, f"steady {backend} {label_of(python)}"):
                    with services.store(backend, flavour_of(python)) as options:
                        config = {**base_config(args, backend, python), "scenario": "steady"}
                        config.update(
                            options=options,
                            n=args.n,
                            interval=args.interval,
                            duration=args.duration,
                            waves=args.waves,
                        )
                        if args.profile and python == OURS and rep == 0:
                            config["profile"] = os.path.join(args.profile, f"steady-{backend}.txt")
                        config = with_server_pid(services, backend, config)
                        result = run_worker(python, config, timeout=args.duration + 600)
                    late = result["lateness_ms"]
                    achieved[python].append(result["achieved_per_s"])
                    report.record("steady", backend, flavour_of(python), result)
                    print(
                        f"| {rep + 1} | {label_of(python)} | {fmt(result['demanded_per_s'])} | "
                        f"{fmt(result['achieved_per_s'])} | {fmt(late['p50'], 1)} | "
                        f"{fmt(late['p99'], 1)} | {fmt(late['max'], 1)} | "
                        f"{cost_cells(result)} | {fmt(result['peak_rss_mib'], 1)} |",
                        flush=True,
                    )
        summarize(achieved, "achieved executions/s")


def scenario_register(services: Services, args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        if compare_impossible(args, backend):
            continue
        print(f"\n### register — {backend}, n={args.n} per method\n")
        print("| run | package | sequential /s | gathered (100) /s | bulk /s |")
        print("|---|---|---:|---:|---:|")
        best: dict[str, list[float]] = {python: [] for python in pythons(args)}
        gathered: dict[str, list[float]] = {python: [] for python in pythons(args)}
        for rep in range(args.repeat):
            for python in pythons(args):
                with noted(report, f"register {backend} {label_of(python)}"):
                    with services.store(backend, flavour_of(python)) as options:
                        config = {**base_config(args, backend, python), "scenario": "register"}
                        config.update(options=options, n=args.n, api="bulk")
                        result = run_worker(python, config)
                    rates = result["rates"]
                    best[python].append(max(rates.values()))
                    gathered[python].append(rates["gathered"])
                    report.record("register", backend, flavour_of(python), result)
                    print(
                        f"| {rep + 1} | {label_of(python)} | {fmt(rates['sequential'])} | "
                        f"{fmt(rates['gathered'])} | {fmt(rates.get('bulk'))} |",
                        flush=True,
                    )
        print("\nbest method of each package:")
        summarize(best, "registrations/s (best method)")
        if args.compare:
            print("\nsame method (gathered schedule_task):")
            summarize(gathered, "registrations/s (gathered)")


def scenario_scale(services: Services, args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        big = args.stored
        print(
            f"\n### scale — {backend}, {args.due} due among 1,000 vs {big:,} stored, "
            f"batch_size={args.batch_size}\n"
        )
        print(
            "| run | stored | claim p50 ms | claim max ms | drain of due s | setup s |"
            " peak RSS MiB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        p50: dict[int, list[float]] = {1000: [], big: []}
        for rep in range(args.repeat):
            for stored in (1000, big):
                with noted(report, f"scale {backend} {stored}"):
                    with services.store(backend) as options:
                        config = {**base_config(args, backend, OURS), "scenario": "scale"}
                        config.update(options=options, stored=stored, due=args.due)
                        result = run_worker(OURS, config, timeout=3600)
                    if result["executions"] != args.due:
                        report.fail(f"scale {backend}: ran {result['executions']} of {args.due}")
                    claim = result["claim_ms"]
                    p50[stored].append(claim["p50"] or 0.0)
                    report.record("scale", backend, "ours", {"stored": stored, **result})
                    print(
                        f"| {rep + 1} | {stored:,} | {fmt(claim['p50'], 2)} | "
                        f"{fmt(claim['max'], 2)} | {fmt(result['drain_s'], 3)} | "
                        f"{fmt(result['setup_s'], 1)} | {fmt(result['peak_rss_mib'], 1)} |",
                        flush=True,
                    )
        if not (p50[1000] and p50[big]):
            continue
        small, large = statistics.median(p50[1000]), statistics.median(p50[big])
        print(
            f"\nmedian claim p50: {small:.2f} ms (1,000) vs {large:.2f} ms ({big:,}): "
            f"{large / small:.2f}x (target <= 2x)",
            flush=True,
        )


def scale_out_once(
    services: Services, args: argparse.Namespace, backend: str, processes: int
) -> dict[str, Any]:
    with services.store(backend) as options, tempfile.TemporaryDirectory() as folder:
        common = {**base_config(args, backend, OURS), "options": options, "n": args.n}
        run_worker(OURS, {**common, "scenario": "setup"})
        start_at = time.time() + 3.0  # let every process import and connect first
        started = []
        for index in range(processes):
            config = {
                **common,
                "scenario": "drain",
                "setup": False,
                "start_at": start_at,
                "idle_exit": args.idle_exit,
                "timeout": args.timeout,
                "out": os.path.join(folder, f"{index}.json"),
            }
            started.append(start_worker(OURS, config))
        results = [finish_worker(p, path, args.timeout + 120) for p, path in started]
        counts: dict[str, int] = {}
        firsts, lasts, per_process = [], [], []
        for index in range(processes):
            with open(os.path.join(folder, f"{index}.json")) as source:
                data = json.load(source)
            per_process.append(len(data["names"]))
            for name in data["names"]:
                counts[name] = counts.get(name, 0) + 1
            if data["first"] is not None:
                firsts.append(data["first"])
                lasts.append(data["last"])
    executions = sum(counts.values())
    span = max(lasts) - min(firsts) if firsts else 0.0
    return {
        "processes": processes,
        "executions": executions,
        "duplicates": executions - len(counts),
        "missing": args.n - len(counts),
        "rate": (executions - 1) / span if span else None,
        "per_process": per_process,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }


def scenario_scale_out(services: Services, args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        if backend not in SHARED:
            print(f"\n(scale-out skipped for {backend}: its store is private to one process)")
            continue
        print(f"\n### scale-out — {backend}, n={args.n}, batch_size={args.batch_size}\n")
        print("| run | processes | executions/s | per process | duplicates | missing |")
        print("|---|---:|---:|---|---:|---:|")
        rates: dict[int, list[float]] = {k: [] for k in args.processes}
        for rep in range(args.repeat):
            for processes in args.processes:
                with noted(report, f"scale-out {backend} x{processes}"):
                    result = scale_out_once(services, args, backend, processes)
                    check_correct(report, f"scale-out {backend} x{processes}", OURS, result)
                    rates[processes].append(result["rate"] or 0.0)
                    report.record("scale-out", backend, "ours", result)
                    print(
                        f"| {rep + 1} | {processes} | {fmt(result['rate'])} | "
                        f"{result['per_process']} | {result['duplicates']} | "
                        f"{result['missing']} |",
                        flush=True,
                    )
        one = rates.get(1)
        for processes, values in rates.items():
            if values and one and processes != 1:
                ratios = [a / b for a, b in zip(values, one, strict=True) if b]
                print(
                    f"{processes} processes vs 1: median {statistics.median(ratios):.2f}x "
                    f"(runs: {', '.join(f'{r:.2f}x' for r in ratios)})",
                    flush=True,
                )


def scenario_contention(services: Services, args: argparse.Namespace, report: Report) -> None:
    from benchmarks.contention import scenario_contention as run

    run(services, args, report)


def scenario_wakeup(services: Services, args: argparse.Namespace, report: Report) -> None:
    from benchmarks.wakeup import scenario_wakeup as run

    run(services, args, report)


SCENARIOS: dict[str, Callable[[Services, argparse.Namespace, Report], None]] = {
    "drain": scenario_drain,
    "steady": scenario_steady,
    "register": scenario_register,
    "scale": scenario_scale,
    "scale-out": scenario_scale_out,
    "contention": scenario_contention,
    "wakeup": scenario_wakeup,
}

DEFAULT_N = {
    "drain": 20000,
    "steady": 2000,
    "register": 2000,
    "scale": 0,
    "scale-out": 20000,
    "contention": 20000,
    "wakeup": 100,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--backend",
        default="memory",
        help=(
            f"comma-separated: {', '.join(CHOICES)}; or 'all': {', '.join(BACKENDS)} "
            "(default memory)"
        ),
    )
    parser.add_argument("-n", type=int, help="instances (default depends on the scenario)")
    parser.add_argument("--compare", action="store_true", help="alternate with Pyncette 1.1.0")
    parser.add_argument("--repeat", type=int, help="runs (pairs with --compare); default 1, 3")
    parser.add_argument(
        "--no-count",
        dest="count",
        action="store_false",
        help="no request counting or server CPU (for A/B runs against another commit)",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--job-sleep",
        type=float,
        metavar="SECONDS",
        help="drain: each execution awaits asyncio.sleep(SECONDS) first (0 yields once); "
        "by default it never waits",
    )
    parser.add_argument("--concurrency-limit", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="steady: seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="steady: seconds")
    parser.add_argument(
        "--waves",
        type=int,
        default=10,
        help="steady: instances are added in this many waves over one interval (1 = all at once)",
    )
    parser.add_argument("--stored", type=int, default=1_000_000, help="scale: big store")
    parser.add_argument("--due", type=int, default=1000, help="scale: due instances")
    parser.add_argument(
        "--processes",
        help="scale-out (default 1,2,4), contention (default 1,2,4,8): process counts",
    )
    parser.add_argument("--steady-n", type=int, default=1000, help="contention: steady instances")
    parser.add_argument("--idle-exit", type=float, default=3.0, help="scale-out: seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker, seconds")
    parser.add_argument("--profile", metavar="DIR", help="pyinstrument text profiles here")
    parser.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="drain: skip the plain-driver ceiling runs",
    )
    parser.add_argument(
        "--run-history",
        type=int,
        default=0,
        metavar="N",
        help="Pyncette(run_history=N): keep the last N runs of each task (default 0, off)",
    )
    parser.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    args = parser.parse_args(argv)
    if args.run_history and args.compare:
        parser.error("--run-history is ours only: it cannot go with --compare")
    args.backends = (
        list(BACKENDS) if args.backend == "all" else [b for b in args.backend.split(",") if b]
    )
    unknown = [b for b in args.backends if b not in CHOICES]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(CHOICES)}")
    if args.processes is None:
        args.processes = "1,2,4,8" if args.scenario == "contention" else "1,2,4"
    args.processes = [int(p) for p in args.processes.split(",")]
    if args.n is None:
        args.n = DEFAULT_N[args.scenario]
    if args.repeat is None:
        args.repeat = 3 if args.compare else 1
    if args.compare and args.scenario in ("scale", "scale-out", "contention", "wakeup"):
        parser.error("--compare applies to drain, steady and register")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["chaos"]:  # reliability scenarios: benchmarks/chaos.py
        from benchmarks.chaos import main as chaos_main

        return chaos_main(words[1:])
    args = parse(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    print(
        f"pyncette benchmark {args.scenario} — {stamp} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    report = Report(args.json)
    services = Services()
    try:
        SCENARIOS[args.scenario](services, args, report)
    finally:
        services.close()
    if report.failures:
        print(f"\n{len(report.failures)} failure(s)", file=sys.stderr)
        return 1
    return 0
