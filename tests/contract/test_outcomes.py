"""The run-outcome and run-history part of the lease contract, run on every backend.

Outcomes are opaque text to a backend; these tests use JSON-like strings of several
sizes, including characters outside ASCII, to check they come back byte for byte.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest

from backends import BackendConfig
from pyncette.repository import Commit, History, Repository
from support import LEASE, T0, A, B, S, reg

pytestmark = pytest.mark.anyio

KEEP3 = History(keep=3, retention=datetime.timedelta(days=7))


@pytest.fixture
async def repo(backend: BackendConfig) -> AsyncIterator[Repository]:
    async with backend.repository_factory(**backend.options) as repository:
        yield repository


def outcome(n: int) -> str:
    return f'{{"run":{n},"note":"é ✓ {"x" * n}"}}'


async def claimed(repo: Repository, *names: str, now: datetime.datetime = T0) -> None:
    await repo.register("g", [reg(name, now) for name in names], now=now, force=False)
    result = await repo.claim("g", now=now, limit=len(names), lease=A)
    assert sorted(r.name for r in result.records) == sorted(names)


async def test_a_new_row_has_no_outcome(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    record = await repo.get("g", "a")
    assert record is not None and record.outcome is None
    assert await repo.history("g", "a", limit=10) == []


async def test_commit_stores_the_outcome_with_the_row(repo: Repository) -> None:
    await claimed(repo, "a", "b")
    lost = await repo.commit(
        "g", [Commit("a", A, T0 + S, outcome(1)), Commit("b", A, T0 + S)], now=T0
    )
    assert lost == []
    a, b = await repo.get("g", "a"), await repo.get("g", "b")
    assert a is not None and a.outcome == outcome(1)
    assert a.scheduled_at == T0 + S and a.locked_by is None
    assert b is not None and b.outcome is None
    page = await repo.list("g", limit=10)
    assert {r.name: r.outcome for r in page.records} == {"a": outcome(1), "b": None}


async def test_a_commit_without_outcome_keeps_the_stored_one(repo: Repository) -> None:
    await claimed(repo, "a")
    await repo.commit("g", [Commit("a", A, T0 + S, outcome(1))], now=T0)
    await repo.claim("g", now=T0 + S, limit=1, lease=B)
    await repo.commit("g", [Commit("a", B, T0 + 2 * S)], now=T0 + S)
    record = await repo.get("g", "a")
    assert record is not None and record.outcome == outcome(1)
    assert record.scheduled_at == T0 + 2 * S


async def test_a_refused_commit_stores_no_outcome(repo: Repository) -> None:
    await claimed(repo, "a")
    history = History(keep=5, retention=datetime.timedelta(days=1))
    assert await repo.commit("g", [Commit("a", B, T0 + S, outcome(1), history)], now=T0) == ["a"]
    record = await repo.get("g", "a")
    assert record is not None and record.outcome is None and record.locked_by == A
    assert await repo.history("g", "a", limit=10) == []


async def test_unlock_stores_the_outcome_and_refusal_does_not(repo: Repository) -> None:
    await claimed(repo, "a")
    assert await repo.unlock("g", "a", B, outcome=outcome(9), history=KEEP3, now=T0) is False
    assert await repo.history("g", "a", limit=10) == []
    assert await repo.unlock("g", "a", A, outcome=outcome(2), history=KEEP3, now=T0) is True
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.outcome, record.locked_by, record.scheduled_at) == (outcome(2), None, T0)
    assert await repo.history("g", "a", limit=10) == [outcome(2)]
    # a plain unlock leaves the outcome alone
    await repo.claim("g", now=T0, limit=1, lease=B)
    assert await repo.unlock("g", "a", B) is True
    record = await repo.get("g", "a")
    assert record is not None and record.outcome == outcome(2)


async def test_history_keeps_the_newest_entries_newest_first(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
    now = T0
    for n in range(5):
        now = T0 + n * S
        result = await repo.claim("g", now=now, limit=2, lease=A)
        assert len(result.records) == 2
        commits = [
            Commit("a", A, now + S, outcome(n), KEEP3),
            Commit("b", A, now + S, outcome(100 + n), KEEP3),
        ]
        assert await repo.commit("g", commits, now=now) == []
    assert await repo.history("g", "a", limit=3) == [outcome(4), outcome(3), outcome(2)]
    assert await repo.history("g", "a", limit=2) == [outcome(4), outcome(3)]
    # entries beyond ``keep`` may be dropped, not necessarily at once
    everything = await repo.history("g", "a", limit=10)
    assert everything[:3] == [outcome(4), outcome(3), outcome(2)]
    assert everything == [outcome(n) for n in range(4, 4 - len(everything), -1)]
    assert await repo.history("g", "b", limit=1) == [outcome(104)]
    assert await repo.history("other", "a", limit=10) == []
    record = await repo.get("g", "a")
    assert record is not None and record.outcome == outcome(4)


async def test_history_without_a_policy_is_not_written(repo: Repository) -> None:
    await claimed(repo, "a")
    await repo.commit("g", [Commit("a", A, T0 + S, outcome(1))], now=T0)
    assert await repo.history("g", "a", limit=10) == []


async def test_history_outlives_a_deleted_row(repo: Repository) -> None:
    await claimed(repo, "once")
    assert await repo.commit("g", [Commit("once", A, None, outcome(7), KEEP3)], now=T0) == []
    assert await repo.get("g", "once") is None
    assert await repo.history("g", "once", limit=10) == [outcome(7)]


async def test_history_of_rows_in_different_groups_is_apart(repo: Repository) -> None:
    for group in ("g1", "g2"):
        await repo.register(group, [reg("a", T0)], now=T0, force=False)
        await repo.claim(group, now=T0, limit=1, lease=A)
        await repo.commit(group, [Commit("a", A, T0 + LEASE, outcome(len(group)), KEEP3)], now=T0)
    await repo.claim("g1", now=T0 + LEASE, limit=1, lease=B)
    await repo.commit("g1", [Commit("a", B, T0 + 2 * LEASE, outcome(50), KEEP3)], now=T0 + LEASE)
    assert await repo.history("g1", "a", limit=10) == [outcome(50), outcome(2)]
    assert await repo.history("g2", "a", limit=10) == [outcome(2)]


async def test_a_large_outcome_round_trips(repo: Repository) -> None:
    big = '{"e":"' + "Ü" * 4000 + '"}'
    await claimed(repo, "a")
    await repo.commit("g", [Commit("a", A, T0 + S, big, KEEP3)], now=T0)
    record = await repo.get("g", "a")
    assert record is not None and record.outcome == big
    assert await repo.history("g", "a", limit=1) == [big]


async def test_registering_again_keeps_the_outcome(repo: Repository) -> None:
    await claimed(repo, "a")
    await repo.commit("g", [Commit("a", A, T0 + S, outcome(1))], now=T0)
    # start-up registers static tasks again; forced registrations (pause) too
    await repo.register("g", [reg("a", T0 + 5 * S)], now=T0, force=False)
    await repo.register("g", [reg("a", T0 + 9 * S, '{"new":1}')], now=T0, force=True)
    record = await repo.get("g", "a")
    assert record is not None and record.outcome == outcome(1)
    assert (record.scheduled_at, record.spec) == (T0 + 9 * S, '{"new":1}')
    # a row registered anew after it was removed starts without one
    assert await repo.unregister("g", "a") is True
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    again = await repo.get("g", "a")
    assert again is not None and again.outcome is None
