"""Long form of the chaos scenarios 4-7: start-up storm, clock skew, hostile input and
overload (``tests/chaos/test_startup_storm.py`` and the three beside it).

The scenarios are the test modules themselves; the long form runs them with
``PYNCETTE_CHAOS_LONG=1``, which raises their repetitions:

* ``storm``: 20 rounds per backend instead of 2 (ten processes released from a barrier
  onto a fresh store each round); with ``--fresh`` the ten processes are started anew
  every round instead of once per backend;
* ``skew``: 120 virtual seconds of work per run instead of 12;
* ``hostile``: the same table (it is exhaustive already); ``--repeat`` runs it again;
* ``overload``: 1,000 due instances (100 waves of 10) instead of 100.

``python -m benchmarks chaos --scenario storm|skew|hostile|overload`` calls
:func:`run_scenario`; this module also runs on its own::

    .venv/bin/python -m benchmarks.chaos_storm --scenario storm --backend postgres,redis

Each run prints the scenario's figures (one JSON object per backend, from the tests'
``PYNCETTE_CHAOS_REPORT`` file) and returns pytest's exit status (0: all passed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "storm": "tests/chaos/test_startup_storm.py",
    "skew": "tests/chaos/test_clock_skew.py",
    "hostile": "tests/chaos/test_hostile_input.py",
    "overload": "tests/chaos/test_overload.py",
}
BACKENDS = ("memory", "sqlite", "postgres", "mysql", "redis", "redis_cluster", "dynamodb")


def _selection(backends: Sequence[str]) -> list[str]:
    """A ``-k`` expression keeping the tests of ``backends`` (by test name or id) and
    the tests of no backend in particular."""
    if not backends or set(backends) >= set(BACKENDS):
        return []
    terms = []
    for backend in backends:
        if backend == "redis":  # not redis_cluster
            terms.append("(redis and not redis_cluster)")
        else:
            terms.append(backend)
    # "redis" also matches "redis_cluster"
    anyone = " or ".join(b for b in BACKENDS if b != "redis_cluster")
    return ["-k", f"{' or '.join(terms)} or not ({anyone})"]


def run_scenario(
    scenario: str,
    backends: Sequence[str] = (),
    *,
    repeat: int = 1,
    rounds: int | None = None,
    fresh: bool = False,
    json_path: str | None = None,
    timeout: float = 3600.0,
) -> int:
    """Run the long form of ``scenario`` (``storm``, ``skew``, ``hostile`` or
    ``overload``) on ``backends`` (all when empty), ``repeat`` times; return 0 if every
    run passed, else the first failing pytest exit status.

    ``rounds`` overrides the scenario's repetitions (``PYNCETTE_CHAOS_ROUNDS``); ``fresh``
    starts the storm's processes anew every round; ``json_path`` receives the figures,
    one JSON line per backend and run.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    status = 0
    for attempt in range(1, repeat + 1):
        with tempfile.NamedTemporaryFile(prefix="pyncette-chaos-", suffix=".jsonl") as report:
            env = {
                **os.environ,
                "PYNCETTE_CHAOS_LONG": "1",
                "PYNCETTE_CHAOS_REPORT": report.name,
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            if rounds is not None:
                env["PYNCETTE_CHAOS_ROUNDS"] = str(rounds)
            if fresh:
                env["PYNCETTE_CHAOS_FRESH"] = "1"
            command = [
                sys.executable,
                "-m",
                "pytest",
                SCENARIOS[scenario],
                "-m",
                "chaos",
                "-q",
                "-rfEX",
                "-p",
                "no:cacheprovider",
                *_selection(backends),
            ]
            print(f"== {scenario}, run {attempt} of {repeat}: {' '.join(command[2:])}", flush=True)
            started = time.monotonic()
            try:
                completed = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout, check=False)
                code = completed.returncode
            except subprocess.TimeoutExpired:
                print(f"timed out after {timeout:.0f} s", file=sys.stderr)
                code = 124
            figures = [json.loads(line) for line in Path(report.name).read_text().splitlines()]
        elapsed = time.monotonic() - started
        for entry in figures:
            entry.update(run=attempt, wall_s=round(elapsed, 1))
            print(json.dumps(entry), flush=True)
        if json_path:
            with open(json_path, "a", encoding="utf-8") as out:
                for entry in figures:
                    out.write(json.dumps(entry) + "\n")
        print(f"== {scenario}, run {attempt}: exit {code} in {elapsed:.1f} s", flush=True)
        if code not in (0, 5) and status == 0:  # 5: nothing selected (no such backend here)
            status = code
    return status


def parse(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos_storm", description=__doc__)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--backend", default="all", help=f"comma-separated: {', '.join(BACKENDS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole scenario")
    parser.add_argument("--rounds", type=int, help="override the scenario's repetitions")
    parser.add_argument("--fresh", action="store_true", help="storm: new processes each round")
    parser.add_argument("--json", metavar="FILE", help="append the figures here")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    args = parser.parse_args(argv)
    backends = [] if args.backend == "all" else [b for b in args.backend.split(",") if b]
    return {
        "scenario": args.scenario,
        "backends": backends,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "fresh": args.fresh,
        "json_path": args.json,
        "timeout": args.timeout,
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    scenario = options.pop("scenario")
    backends = options.pop("backends")
    return run_scenario(scenario, backends, **options)


if __name__ == "__main__":
    sys.exit(main())
