"""The benchmark helpers that turn runs into figures: the counting repository proxy,
driver round-trip counting, and the contention benchmark's duplicate checker."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks.contention import duplicates, lateness_ms, merge_counts
from benchmarks.counting import CountingRepository, Tally, counting_factory
from pyncette.memory import memory_repository
from pyncette.model import Lease
from pyncette.repository import Commit, Registration
from pyncette.sqlite import sqlite_repository

pytestmark = pytest.mark.anyio

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)


def due(*names: str) -> list[Registration]:
    return [Registration(name, None, NOW - MINUTE, MINUTE) for name in names]


async def test_counting_repository_counts_calls_empty_claims_and_stale_commits() -> None:
    tally = Tally()
    async with memory_repository() as inner:
        repository = CountingRepository(inner, tally)
        await repository.register("g", due("a", "b", "c"), now=NOW, force=False)
        first = await repository.claim("g", now=NOW, limit=2, lease=Lease("one"))
        second = await repository.claim("g", now=NOW, limit=2, lease=Lease("two"))
        empty = await repository.claim("g", now=NOW, limit=2, lease=Lease("three"))
        mark = tally.snapshot()
        done = [Commit(record.name, Lease("one"), None) for record in first.records]
        stale = [Commit(record.name, Lease("wrong"), None) for record in second.records]
        assert await repository.commit("g", done + stale, now=NOW) == ["c"]

    assert (len(first.records), len(second.records), len(empty.records)) == (2, 1, 0)
    assert tally.calls == {"register": 1, "claim": 3, "commit": 1}
    assert (tally.claimed, tally.empty_claims, tally.stale_commits) == (3, 1, 1)
    window = tally.since(mark)
    assert window.calls == {"commit": 1}
    assert window.summary(executions=2)["requests_per_execution"] == 0.5


async def test_sqlite_round_trips_are_counted_per_statement(tmp_path: Path) -> None:
    """An idle claim on SQLite is one statement with no BEGIN/COMMIT; a short claim that
    takes rows is the look, one ``UPDATE … RETURNING`` and the next-due read, each a
    statement of its own with no transaction around it."""
    tally = Tally()
    factory = counting_factory(sqlite_repository, tally)
    async with factory(sqlite_database=str(tmp_path / "count.db")) as repository:
        before = tally.snapshot()
        await repository.claim("g", now=NOW, limit=10, lease=Lease("idle"))
        assert tally.since(before).round_trips == {"statement": 1}
        await repository.register("g", due("a", "b"), now=NOW, force=False)
        before = tally.snapshot()
        claimed = await repository.claim("g", now=NOW, limit=10, lease=Lease("busy"))
        assert len(claimed.records) == 2
        trips = tally.since(before).round_trips
    assert trips == {"statement": 3}


def test_duplicate_checker_finds_a_planted_duplicate() -> None:
    clean = [[["a", 1.0, 1.1], ["b", 1.0, 1.2]], [["a", 3.0, 3.05]]]
    assert duplicates(clean) == 0
    planted = [*clean, [["b", 1.0, 1.3]]]  # another process ran b's 1.0 run again
    assert duplicates(planted) == 1


def test_lateness_counts_from_the_later_of_due_and_floor() -> None:
    logs = [[["a", 0.0, 10.5], ["b", 12.0, 12.25]]]
    assert lateness_ms(logs, floor=10.0) == {"p50": 250.0, "p99": 500.0, "max": 500.0}
    assert lateness_ms(logs, due_from=5.0)["max"] == 250.0


def test_wasted_claims_sum_empty_claims_and_lost_rows_over_processes() -> None:
    results: list[dict[str, Any]] = [
        {"counts": {"executions": 10, "requests": 3, "empty_claims": 1, "calls": {"claim": 2}}},
        {"counts": {"executions": 10, "requests": 5, "empty_claims": 2, "stale_commits": 1}},
    ]
    merged = merge_counts(results)
    assert merged["wasted_claims"] == 4
    assert merged["requests_per_execution"] == 0.4
