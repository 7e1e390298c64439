"""The lease contract of ``pyncette.repository.Repository``, run on every backend."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest

from backends import BackendConfig
from pyncette.model import ContinuationToken, Lease
from pyncette.repository import Commit, Repository
from support import LEASE, T0, A, B, S, reg

pytestmark = pytest.mark.anyio


@pytest.fixture
async def repo(backend: BackendConfig) -> AsyncIterator[Repository]:
    async with backend.repository_factory(**backend.options) as repository:
        yield repository


async def test_register_and_get_roundtrip(repo: Repository) -> None:
    assert await repo.get("g", "a") is None
    assert await repo.register("g", [reg("a", T0, '{"x": 1}')], now=T0, force=False) == []
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.name, record.spec, record.scheduled_at) == ("a", '{"x": 1}', T0)
    assert record.locked_by is None and record.locked_until is None
    assert await repo.get("other", "a") is None


async def test_timestamps_keep_microseconds_and_utc(repo: Repository) -> None:
    at = T0 + datetime.timedelta(microseconds=123456)
    await repo.register("g", [reg("a", at)], now=T0, force=False)
    record = await repo.get("g", "a")
    assert record is not None
    assert record.scheduled_at == at
    assert record.scheduled_at.utcoffset() == datetime.timedelta(0)


async def test_claim_takes_due_rows_soonest_first_up_to_limit(repo: Repository) -> None:
    await repo.register(
        "g",
        [reg("late", T0 + 3 * S), reg("first", T0 - 2 * S), reg("second", T0 - S), reg("now", T0)],
        now=T0,
        force=False,
    )
    result = await repo.claim("g", now=T0, limit=2, lease=A)
    assert [r.name for r in result.records] == ["first", "second"]
    for record in result.records:
        assert record.locked_by == A
        assert record.locked_until == T0 + LEASE
    assert [r.scheduled_at for r in result.records] == [T0 - 2 * S, T0 - S]
    rest = await repo.claim("g", now=T0, limit=10, lease=B)
    assert [r.name for r in rest.records] == ["now"]
    if rest.next_due_at is not None:
        assert rest.next_due_at == T0 + 3 * S
    assert (await repo.claim("g", now=T0, limit=10, lease=B)).records == []


async def test_a_claimed_batch_comes_in_scheduled_order(
    repo: Repository, backend: BackendConfig
) -> None:
    """Runs of a batch start in the order the claim returns them: soonest first. Rows
    due at the same time come by name on the stores (whatever order they were
    registered in), and as they were registered in memory."""
    times = {"e": T0 - S, "d": T0 - 3 * S, "c": T0 - S, "b": T0 - 2 * S, "a": T0 - S}
    registrations = [reg(name, at) for name, at in times.items()]
    await repo.register("g", registrations, now=T0, force=False)
    result = await repo.claim("g", now=T0, limit=10, lease=A)
    names = [r.name for r in result.records]
    assert names[:2] == ["d", "b"]
    assert names[2:] == (["e", "c", "a"] if backend.name == "memory" else ["a", "c", "e"])


async def test_claim_uses_each_rows_lease_duration(repo: Repository) -> None:
    await repo.register(
        "g", [reg("short", T0, lease=5 * S), reg("long", T0, lease=LEASE)], now=T0, force=False
    )
    result = await repo.claim("g", now=T0, limit=10, lease=A)
    assert {r.name: r.locked_until for r in result.records} == {
        "short": T0 + 5 * S,
        "long": T0 + LEASE,
    }


async def test_locked_rows_are_reclaimable_only_after_expiry(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    assert len((await repo.claim("g", now=T0, limit=1, lease=A)).records) == 1
    assert (await repo.claim("g", now=T0 + LEASE - S, limit=1, lease=B)).records == []
    again = await repo.claim("g", now=T0 + LEASE, limit=1, lease=B)
    assert [r.locked_by for r in again.records] == [B]
    assert again.records[0].scheduled_at == T0
    # the first holder's lease is now stale
    assert await repo.commit("g", [Commit("a", A, T0 + 10 * S)], now=T0 + LEASE) == ["a"]
    record = await repo.get("g", "a")
    assert record is not None and record.locked_by == B and record.scheduled_at == T0


async def test_commit_moves_schedule_and_unlocks(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=10, lease=A)
    lost = await repo.commit(
        "g", [Commit("a", A, T0 + 10 * S), Commit("b", A, None), Commit("zzz", A, None)], now=T0
    )
    assert lost == ["zzz"]
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.scheduled_at, record.locked_by, record.locked_until) == (T0 + 10 * S, None, None)
    assert await repo.get("g", "b") is None
    assert (await repo.claim("g", now=T0 + 9 * S, limit=10, lease=B)).records == []
    assert [
        r.name for r in (await repo.claim("g", now=T0 + 10 * S, limit=10, lease=B)).records
    ] == ["a"]


async def test_a_row_committed_twice_in_one_call_takes_one_of_them(repo: Repository) -> None:
    """Whichever applies first unlocks the row, and the other is reported lost (the SQL
    backends and memory apply them in order; DynamoDB writes a commit's items at once)."""
    await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=10, lease=A)
    lost = await repo.commit(
        "g", [Commit("a", A, T0 + 10 * S), Commit("b", A, None), Commit("a", A, None)], now=T0
    )
    assert lost == ["a"]
    record = await repo.get("g", "a")
    if record is not None:  # moved on by the first, not deleted by the second
        assert (record.scheduled_at, record.locked_by) == (T0 + 10 * S, None)
    assert await repo.get("g", "b") is None


async def test_commit_with_wrong_lease_changes_nothing(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=1, lease=A)
    assert await repo.commit("g", [Commit("a", B, None)], now=T0) == ["a"]
    record = await repo.get("g", "a")
    assert record is not None and record.locked_by == A
    # an unlocked row refuses commits too
    await repo.unlock("g", "a", A)
    assert await repo.commit("g", [Commit("a", A, T0 + S)], now=T0) == ["a"]


async def test_commit_with_expired_but_unclaimed_lease_is_accepted(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=1, lease=A)
    assert await repo.commit("g", [Commit("a", A, T0 + 100 * S)], now=T0 + 2 * LEASE) == []


async def test_extend_and_unlock_are_guarded(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=1, lease=A)
    assert await repo.extend("g", "a", B, locked_until=T0 + 2 * LEASE) is False
    assert await repo.extend("g", "a", A, locked_until=T0 + 2 * LEASE) is True
    assert (await repo.claim("g", now=T0 + LEASE, limit=1, lease=B)).records == []
    record = await repo.get("g", "a")
    assert record is not None and record.locked_until == T0 + 2 * LEASE
    assert await repo.unlock("g", "a", B) is False
    assert await repo.unlock("g", "a", A) is True
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.scheduled_at, record.locked_by, record.locked_until) == (T0, None, None)
    assert [r.name for r in (await repo.claim("g", now=T0, limit=1, lease=B)).records] == ["a"]
    assert await repo.extend("g", "missing", A, locked_until=T0) is False
    assert await repo.unlock("g", "missing", A) is False


async def test_register_keeps_the_sooner_run_and_replaces_spec(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0 + 10 * S, '{"v": 1}')], now=T0, force=False)
    await repo.register("g", [reg("a", T0 + 20 * S, '{"v": 2}', lease=5 * S)], now=T0, force=False)
    record = await repo.get("g", "a")
    assert record is not None and (record.scheduled_at, record.spec) == (T0 + 10 * S, '{"v": 2}')
    await repo.register("g", [reg("a", T0 + 5 * S, '{"v": 3}')], now=T0, force=False)
    record = await repo.get("g", "a")
    assert record is not None and (record.scheduled_at, record.spec) == (T0 + 5 * S, '{"v": 3}')
    # the new lease duration is what a claim uses
    await repo.register("g", [reg("a", T0, '{"v": 3}', lease=5 * S)], now=T0, force=False)
    claimed = await repo.claim("g", now=T0, limit=1, lease=A)
    assert [r.locked_until for r in claimed.records] == [T0 + 5 * S]


async def test_register_on_a_live_lease_is_refused_unless_forced(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0, '{"v": 1}')], now=T0, force=False)
    await repo.claim("g", now=T0, limit=1, lease=A)
    skipped = await repo.register(
        "g", [reg("a", T0 + S, '{"v": 2}'), reg("b", T0)], now=T0, force=False
    )
    assert skipped == ["a"]
    record = await repo.get("g", "a")
    assert record is not None and (record.spec, record.locked_by) == ('{"v": 1}', A)
    assert await repo.get("g", "b") is not None
    assert await repo.register("g", [reg("a", T0 + S, '{"v": 2}')], now=T0, force=True) == []
    record = await repo.get("g", "a")
    assert record is not None and (record.spec, record.locked_by, record.scheduled_at) == (
        '{"v": 2}',
        None,
        T0 + S,
    )
    assert await repo.commit("g", [Commit("a", A, T0 + LEASE)], now=T0) == ["a"]
    # an expired lease does not block registration
    await repo.claim("g", now=T0, limit=10, lease=B)
    assert await repo.register("g", [reg("a", T0, '{"v": 4}')], now=T0 + LEASE, force=False) == []


async def test_forced_register_replaces_the_schedule_even_when_later(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0 + 10 * S, '{"v": 1}')], now=T0, force=False)
    assert (
        await repo.register(
            "g", [reg("a", T0 + 30 * S, '{"v": 2}', lease=5 * S)], now=T0, force=True
        )
        == []
    )
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.spec, record.scheduled_at, record.locked_by, record.locked_until) == (
        '{"v": 2}',
        T0 + 30 * S,
        None,
        None,
    )
    # the claim index moved with it: not due at the old time, due at the new one
    assert (await repo.claim("g", now=T0 + 29 * S, limit=10, lease=A)).records == []
    claimed = await repo.claim("g", now=T0 + 30 * S, limit=10, lease=A)
    assert [(r.name, r.scheduled_at, r.locked_until) for r in claimed.records] == [
        ("a", T0 + 30 * S, T0 + 35 * S)
    ]
    # forcing an earlier time works as well
    await repo.commit("g", [Commit("a", A, T0 + 50 * S)], now=T0 + 30 * S)
    await repo.register("g", [reg("a", T0 + 40 * S)], now=T0 + 30 * S, force=True)
    record = await repo.get("g", "a")
    assert record is not None and record.scheduled_at == T0 + 40 * S
    # and unforced registrations still keep the sooner run, not the latest one
    await repo.register("g", [reg("a", T0 + 45 * S, '{"v": 3}')], now=T0 + 30 * S, force=False)
    record = await repo.get("g", "a")
    assert record is not None and (record.spec, record.scheduled_at) == ('{"v": 3}', T0 + 40 * S)
    await repo.register("g", [reg("a", T0 + 35 * S, '{"v": 4}')], now=T0 + 30 * S, force=False)
    record = await repo.get("g", "a")
    assert record is not None and (record.spec, record.scheduled_at) == ('{"v": 4}', T0 + 35 * S)
    assert (await repo.claim("g", now=T0 + 34 * S, limit=10, lease=A)).records == []
    assert len((await repo.claim("g", now=T0 + 35 * S, limit=10, lease=A)).records) == 1


async def test_forced_register_on_a_live_lease_takes_the_later_time_at_once(
    repo: Repository,
) -> None:
    await repo.register("g", [reg("a", T0, '{"v": 1}')], now=T0, force=False)
    assert len((await repo.claim("g", now=T0, limit=1, lease=A)).records) == 1
    later = T0 + 10 * LEASE
    assert await repo.register("g", [reg("a", later, '{"v": 2}')], now=T0 + S, force=True) == []
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.spec, record.scheduled_at, record.locked_by, record.locked_until) == (
        '{"v": 2}',
        later,
        None,
        None,
    )
    # the old holder is refused everywhere, and changes nothing
    assert await repo.extend("g", "a", A, locked_until=T0 + 2 * LEASE) is False
    assert await repo.commit("g", [Commit("a", A, T0 + S)], now=T0 + 2 * S) == ["a"]
    assert await repo.unlock("g", "a", A) is False
    record = await repo.get("g", "a")
    assert record is not None
    assert (record.scheduled_at, record.locked_by, record.locked_until) == (later, None, None)
    # neither the old run nor the old lease's expiry makes the row claimable again
    assert (await repo.claim("g", now=T0 + LEASE, limit=10, lease=B)).records == []
    claimed = await repo.claim("g", now=later, limit=10, lease=B)
    assert [(r.name, r.scheduled_at, r.locked_by) for r in claimed.records] == [("a", later, B)]
    assert await repo.commit("g", [Commit("a", A, None)], now=later) == ["a"]
    assert await repo.commit("g", [Commit("a", B, later + S)], now=later) == []


async def test_the_same_batch_unforced_then_forced(repo: Repository) -> None:
    await repo.register(
        "g",
        [
            reg("expired", T0),
            reg("held", T0),
            reg("free", T0 + 5 * S),
            reg("sooner", T0 + 10 * LEASE),
        ],
        now=T0,
        force=False,
    )
    await repo.claim("g", now=T0, limit=2, lease=A)  # "expired" and "held"
    await repo.extend("g", "held", A, locked_until=T0 + 10 * LEASE)
    now = T0 + 2 * LEASE  # "expired"'s lease ran out, "held"'s is live
    batch = [
        reg("expired", now + 10 * S, '{"v": "expired"}', lease=5 * S),
        reg("free", now + 20 * S, '{"v": "free"}'),
        reg("held", now + 30 * S, '{"v": "held"}'),
        reg("new", now + 40 * S, '{"v": "new"}'),
        reg("sooner", now + 50 * S, '{"v": "sooner"}'),
    ]

    async def rows() -> dict[str, tuple[object, ...]]:
        found: dict[str, tuple[object, ...]] = {}
        for item in batch:
            record = await repo.get("g", item.name)
            assert record is not None
            found[item.name] = (record.spec, record.scheduled_at, record.locked_by)
        return found

    # unforced: sooner runs kept, the live lease left alone, the expired one cleared
    assert await repo.register("g", batch, now=now, force=False) == ["held"]
    assert await rows() == {
        "expired": ('{"v": "expired"}', T0, None),
        "free": ('{"v": "free"}', T0 + 5 * S, None),
        "held": (None, T0, A),
        "new": ('{"v": "new"}', now + 40 * S, None),
        "sooner": ('{"v": "sooner"}', now + 50 * S, None),
    }
    # forced: every row takes exactly what was given, and no lease
    assert await repo.register("g", batch, now=now, force=True) == []
    assert await rows() == {item.name: (item.spec, item.scheduled_at, None) for item in batch}
    assert await repo.commit("g", [Commit("held", A, None)], now=now) == ["held"]
    assert (await repo.claim("g", now=now + 9 * S, limit=10, lease=B)).records == []
    claimed = await repo.claim("g", now=now + 50 * S, limit=10, lease=B)
    assert [r.name for r in claimed.records] == [item.name for item in batch]
    assert claimed.records[0].locked_until == now + 55 * S


async def test_a_name_given_twice_in_one_call_is_registered_twice_in_order(
    repo: Repository,
) -> None:
    await repo.register("g", [reg("a", T0 + 30 * S), reg("b", T0 + 30 * S)], now=T0, force=False)
    twice = [
        reg("a", T0 + 20 * S, '{"v": 1}'),
        reg("a", T0 + 50 * S, '{"v": 2}', lease=5 * S),
        reg("c", T0 + 20 * S, '{"v": 1}'),
        reg("c", T0 + 50 * S, '{"v": 2}'),
    ]
    assert await repo.register("g", twice, now=T0, force=False) == []
    for name in "ac":
        record = await repo.get("g", name)
        assert record is not None and (record.spec, record.scheduled_at) == (
            '{"v": 2}',
            T0 + 20 * S,
        )
    claimed = await repo.claim("g", now=T0 + 20 * S, limit=10, lease=A)
    assert {r.name: r.locked_until for r in claimed.records} == {
        "a": T0 + 25 * S,
        "c": T0 + 20 * S + LEASE,
    }
    # forced, the last one wins, even over a sooner run and a live lease
    forced = [reg("a", T0 + 20 * S, '{"v": 3}'), reg("a", T0 + 60 * S, '{"v": 4}')]
    forced += [reg(n, at, '{"v": 4}') for n, at in (("b", T0), ("b", T0 + 70 * S))]
    assert await repo.register("g", forced, now=T0 + 21 * S, force=True) == []
    for name, at in (("a", T0 + 60 * S), ("b", T0 + 70 * S)):
        record = await repo.get("g", name)
        assert record is not None
        assert (record.spec, record.scheduled_at, record.locked_by) == ('{"v": 4}', at, None)


async def test_unregister(repo: Repository) -> None:
    await repo.register("g", [reg("a", T0)], now=T0, force=False)
    await repo.claim("g", now=T0, limit=1, lease=A)
    assert await repo.unregister("g", "a") is True
    assert await repo.unregister("g", "a") is False
    assert await repo.get("g", "a") is None
    assert await repo.extend("g", "a", A, locked_until=T0 + LEASE) is False
    assert await repo.commit("g", [Commit("a", A, T0)], now=T0) == ["a"]
    assert (await repo.claim("g", now=T0 + 10 * LEASE, limit=1, lease=B)).records == []


async def test_list_pages_through_every_row_once(repo: Repository) -> None:
    names = [f"task-{i:03d}" for i in range(23)]
    await repo.register("g", [reg(n, T0 + i * S) for i, n in enumerate(names)], now=T0, force=False)
    await repo.register("other", [reg("x", T0)], now=T0, force=False)
    seen: list[str] = []
    token: ContinuationToken | None = None
    pages = 0
    while True:
        page = await repo.list("g", limit=5, continuation_token=token)
        assert len(page.records) <= 5
        seen.extend(r.name for r in page.records)
        pages += 1
        token = page.continuation_token
        if token is None:
            break
        assert pages < 20
    assert sorted(seen) == names and len(seen) == len(names)
    assert (await repo.list("empty", limit=5)).records == []


async def test_groups_are_isolated(repo: Repository) -> None:
    await repo.register("g1", [reg("a", T0)], now=T0, force=False)
    await repo.register("g2", [reg("a", T0 + S)], now=T0, force=False)
    assert [r.name for r in (await repo.claim("g2", now=T0, limit=10, lease=A)).records] == []
    assert [r.name for r in (await repo.claim("g1", now=T0, limit=10, lease=A)).records] == ["a"]
    assert await repo.unregister("g2", "a") is True
    assert await repo.get("g1", "a") is not None


async def test_names_and_specs_with_odd_characters(repo: Repository) -> None:
    odd = "user:42/{tag} 'quoted' \"double\" ünï ☃ %s ?"
    spec = '{"text": "it\'s ☃ \\"ok\\""}'
    await repo.register(odd, [reg(odd, T0, spec)], now=T0, force=False)
    record = await repo.get(odd, odd)
    assert record is not None and (record.name, record.spec) == (odd, spec)
    assert [r.name for r in (await repo.claim(odd, now=T0, limit=1, lease=A)).records] == [odd]


async def test_batch_claims_and_commits_of_odd_names(repo: Repository) -> None:
    # names a batch write must pass through intact: quotes, backslashes, JSON and SQL
    # syntax, control characters, non-ASCII, and names that look like numbers
    odd = ['a"b', "c\\d", '["e", 1]', "f'; --", "g\nh", "ü ☃ 𝄞", "42", "x" * 255]
    await repo.register("g", [reg(name, T0) for name in odd], now=T0, force=False)
    claimed = await repo.claim("g", now=T0, limit=len(odd), lease=A)
    assert sorted(r.name for r in claimed.records) == sorted(odd)
    moved, done = odd[::2], odd[1::2]
    lost = await repo.commit(
        "g",
        [Commit(name, A, T0 + 10 * S) for name in moved]
        + [Commit(name, A, None) for name in done]
        + [Commit(moved[0], B, None)],  # a stale lease on a name of the same batch
        now=T0,
    )
    assert lost == [moved[0]]
    for name in moved:
        record = await repo.get("g", name)
        assert record is not None, name
        assert (record.scheduled_at, record.locked_by) == (T0 + 10 * S, None)
    for name in done:
        assert await repo.get("g", name) is None, name


@pytest.mark.shared_storage
async def test_concurrent_claims_never_overlap(backend: BackendConfig) -> None:
    async with (
        backend.repository_factory(**backend.options) as one,
        backend.repository_factory(**backend.options) as two,
    ):
        await one.register("g", [reg(f"t{i}", T0) for i in range(60)], now=T0, force=False)
        results = await asyncio.gather(
            *(
                repo.claim("g", now=T0, limit=7, lease=Lease(f"lease-{i}"))
                for i, repo in enumerate([one, two] * 6)
            )
        )
        claimed = [r.name for result in results for r in result.records]
        assert len(claimed) == len(set(claimed)) == 60


WAKE_UP_BACKENDS = {"postgres", "redis", "redis_cluster"}


async def test_an_announcement_reaches_every_listener_of_the_store(
    backend: BackendConfig, repo: Repository
) -> None:
    """Optional part of the contract (``instant_wakeups``): announce() on one
    repository reaches listen() on every repository of the same store."""
    assert repo.wake_ups is (backend.name in WAKE_UP_BACKENDS)
    if not repo.wake_ups:
        await repo.announce("g", T0)  # accepted, goes nowhere
        with pytest.raises(NotImplementedError):
            await repo.listen(lambda group, due_at: None)
        return
    heard: list[tuple[str, datetime.datetime]] = []
    async with backend.repository_factory(**backend.options) as other:
        listening = asyncio.ensure_future(other.listen(lambda g, at: heard.append((g, at))))
        try:
            at = T0 + datetime.timedelta(microseconds=7)
            for _ in range(250):  # until the subscription is in place, then once more
                await repo.announce("g{1}:x", at)
                await asyncio.sleep(0.02)
                if heard:
                    break
            assert heard and set(heard) == {("g{1}:x", at)}
        finally:
            listening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listening
