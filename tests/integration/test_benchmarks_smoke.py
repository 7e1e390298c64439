"""Smoke test of the benchmark harness: tiny drain and steady runs must be correct."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from backends import require_service
from benchmarks.local_servers import dynamodb_local_missing
from benchmarks.redis_servers import redis_tools_available
from benchmarks.services import Services
from support import ROOT

WORKER = ROOT / "benchmarks" / "worker.py"


def load_worker() -> ModuleType:
    """The worker is a standalone script (it also runs under Pyncette 1.1.0): load it
    from its file and run its scenarios in this process, with a time limit."""
    spec = importlib.util.spec_from_file_location("pyncette_benchmark_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_worker(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    scenario = load_worker().SCENARIOS[config["scenario"]]

    async def bounded() -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.wait_for(scenario(config), timeout=10)
        return result

    return asyncio.run(bounded())


def run_module(module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <arguments>`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def options(backend: str, tmp_path: Path) -> dict[str, Any]:
    return {"sqlite_database": str(tmp_path / "bench.db")} if backend == "sqlite" else {}


@pytest.mark.parametrize(
    ("kind", "job_sleep"),
    [("memory", None), ("sqlite", None), ("null", None), ("memory", 0.0), ("sqlite", 0.001)],
)
def test_drain_runs_everything_once(kind: str, job_sleep: float | None, tmp_path: Path) -> None:
    result = run_worker(
        {
            "scenario": "drain",
            "backend": kind,
            "options": options(kind, tmp_path),
            "api": "bulk",
            "n": 250,
            "timeout": 15,
            "job_sleep": job_sleep,
        },
        tmp_path,
    )
    assert result["executions"] == 250
    assert result["unique"] == 250
    assert result["duplicates"] == 0


def test_the_repository_alone_drains_what_setup_registered(tmp_path: Path) -> None:
    """The middle row of the ceiling table: claims and commits through the repository,
    no scheduler; every row once, one claim and one commit per batch plus the last,
    empty claim."""
    config = {"backend": "sqlite", "options": options("sqlite", tmp_path), "api": "bulk"}
    run_worker({**config, "scenario": "setup", "n": 250}, tmp_path)
    result = run_worker({**config, "scenario": "repository_drain", "batch_size": 100}, tmp_path)
    assert result["executions"] == 250
    assert result["requests"] == 2 * 3 + 1
    assert result["client_cpu_us"] > 0


def test_each_ceiling_run_follows_the_drain_it_is_set_against(tmp_path: Path) -> None:
    """With ``--repeat``, every drain of ours is followed by its ceiling run and its
    repository-alone run (the machine's load drifts between runs), and the report sets
    each drain against the ceiling run beside it."""
    results = tmp_path / "results.jsonl"
    arguments = ["drain", "--backend", "sqlite", "-n", "300", "--repeat", "2"]
    completed = run_module("benchmarks", *arguments, "--no-count", "--json", str(results))
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    order = [(row["scenario"], row["who"]) for row in rows]
    one = [("drain", "ours"), ("ceiling", "plain driver"), ("ceiling", "repository alone")]
    assert order == one * 2
    assert all(row["executions"] == 300 for row in rows)
    assert "each drain against the ceiling run beside it: " in completed.stdout
    # SQLite's ceiling runs in its own process: its CPU time per execution is reported,
    # and each drain's is set against it
    assert all(row["client_cpu_us"] > 0 for row in rows)
    assert "by CPU time, each drain against the ceiling run beside it" in completed.stdout


def test_interleaved_sets_each_drain_against_the_plain_runs_beside_it() -> None:
    """``benchmarks.interleaved`` drains every store (it exits non-zero otherwise) and
    reports one fraction per segment and their median."""
    completed = run_module("benchmarks.interleaved", "-n", "150", "--segments", "2")
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    segments = [line for line in completed.stdout.splitlines() if line[:3] in ("| 1", "| 2")]
    assert len(segments) == 2
    for line in segments:
        mine, theirs = (float(cell.replace(",", "")) for cell in line.split("|")[2:4])
        assert mine > 0 and theirs > 0
    assert "median fraction of the ceiling: " in completed.stdout


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_steady_keeps_up(kind: str, tmp_path: Path) -> None:
    result = run_worker(
        {
            "scenario": "steady",
            "backend": kind,
            "options": options(kind, tmp_path),
            "api": "bulk",
            "n": 50,
            "interval": 0.4,
            "duration": 1.0,
            "poll_interval": 0.05,
        },
        tmp_path,
    )
    # Every instance runs every 0.4 s: at least two full rounds of all 50 in 1 s.
    assert result["executions"] >= 100
    assert result["lateness_ms"]["count"] > 0


@pytest.mark.service("dynamodb")
def test_moto_limits_measures_writes_and_queries() -> None:
    """The raw moto measurement behind the DynamoDB figures runs and reads back what it
    stored (the script checks each query's item count)."""
    arguments = ["--sizes", "30,150", "--writes", "20", "--queries", "2"]
    completed = run_module("benchmarks.moto_limits", *arguments)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "conditional PutItem, 16 thread(s)" in completed.stdout
    assert "| 30 | " in completed.stdout
    assert "| 150 | " in completed.stdout


@pytest.mark.service("redis-cluster")
def test_drain_on_a_private_redis_cluster(tmp_path: Path) -> None:
    """``--backend redis_cluster`` starts its own three-master cluster, drains every
    instance once, counts round trips as on Redis, runs the ceiling through the cluster
    client, and stops the cluster (about 5 s)."""
    require_service("redis-cluster", redis_tools_available(), "redis-server/redis-cli not found")
    results = tmp_path / "results.jsonl"
    arguments = ["drain", "--backend", "redis_cluster", "-n", "300", "--json", str(results)]
    completed = run_module("benchmarks", *arguments)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "private Redis Cluster of 3 masters" in completed.stdout
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    (drain,) = [row for row in rows if row["scenario"] == "drain"]
    assert drain["backend"] == "redis_cluster"
    assert (drain["executions"], drain["duplicates"], drain["missing"]) == (300, 0, 0)
    counts = drain["counts"]
    assert counts["calls"]["claim"] >= 3  # batches of 100
    assert counts["trips_per_execution"] > 0
    assert counts["round_trips"]["command"] >= counts["calls"]["claim"]
    assert drain["server_cpu"]["commands_s"] > 0
    ceilings = {row["who"]: row for row in rows if row["scenario"] == "ceiling"}
    assert ceilings["plain driver"]["executions"] == 300
    assert ceilings["repository alone"]["executions"] == 300
    assert "repository alone" in completed.stdout


@pytest.mark.service("dynamodb-local")
def test_drain_on_dynamodb_local_sends_partiql_batches(tmp_path: Path) -> None:
    """``--backend dynamodb_local`` starts its own DynamoDB Local; the drain and the
    plain-driver ceiling both send the claims and commits 25 to a request (a query per
    100 and eight batches: 0.09 requests per execution, not 2)."""
    problem = dynamodb_local_missing()
    require_service("dynamodb-local", problem is None, problem or "")
    results = tmp_path / "results.jsonl"
    arguments = ["drain", "--backend", "dynamodb_local", "-n", "200", "--json", str(results)]
    completed = run_module("benchmarks", *arguments)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    (drain,) = [row for row in rows if row["scenario"] == "drain"]
    assert (drain["executions"], drain["duplicates"], drain["missing"]) == (200, 0, 0)
    assert drain["counts"]["trips_per_execution"] < 0.2
    ceilings = {row["who"]: row for row in rows if row["scenario"] == "ceiling"}
    assert ceilings["plain driver"]["executions"] == 200
    assert ceilings["plain driver"]["requests_per_execution"] < 0.2
    assert ceilings["repository alone"]["executions"] == 200


def test_calls_per_execution_counts_the_extra_executions() -> None:
    """``python -m benchmarks.calls``: the calls one more execution costs, positive and
    of the order the core makes (tens, not thousands), with the most called listed."""
    arguments = ["--backend", "memory", "--small", "200", "--large", "600", "--top", "3"]
    completed = run_module("benchmarks.calls", *arguments)
    assert completed.returncode == 0, completed.stderr[-2000:]
    first, *top = completed.stdout.splitlines()
    assert first.startswith("memory: ") and first.endswith(" Python calls per execution")
    assert 10 < float(first.split()[1]) < 1000
    assert len(top) == 3


def test_instructions_subtract_setup_and_divide_by_the_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``benchmarks.instructions``: (drain - set-up), the ceiling and the repository
    alone each grow by their cost per execution between the two sizes; start-up and
    set-up cancel out."""
    from benchmarks import instructions

    def fake(script: Path, config: dict[str, Any], *, valgrind: bool = True) -> int:
        n: int = config["n"]
        if script.name == "ceiling.py":
            return 1_000_000 + 60 * n
        if config["scenario"] == "setup":
            return 5_000_000 + 300 * n if valgrind else 0
        if config["scenario"] == "repository_drain":
            return 3_000_000 + 90 * n  # start-up and the drain, on a store set up apart
        return 5_000_000 + 300 * n + 2_000_000 + 150 * n  # set-up, start-up, the drain

    monkeypatch.setattr(instructions, "counted", fake)
    services = Services()
    try:
        assert instructions.per_execution(services, "sqlite", 100, 300) == {
            "ours": 150.0,
            "ceiling": 60.0,
            "alone": 90.0,
        }
        assert "ceiling" not in instructions.per_execution(services, "null", 100, 300)
    finally:
        services.close()


def test_instructions_are_read_from_valgrind(tmp_path: Path) -> None:
    from benchmarks import instructions

    script = tmp_path / "tiny.py"
    script.write_text("print('RESULT {}')\nsum(range(200000))\n")
    small = instructions.counted(script, {})
    script.write_text("print('RESULT {}')\nsum(range(2000000))\n")
    assert instructions.counted(script, {}) > small > 0
