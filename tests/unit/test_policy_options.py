"""Scheduling-policy options (misfire_grace_time, coalesce, max_jitter): validation,
inheritance by dynamic instances and the spec round trip."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest

from pyncette import Context, Pyncette
from pyncette.task import Task

S = datetime.timedelta(seconds=1)
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


async def noop(context: Context) -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": S, "misfire_grace_time": -S}, "misfire_grace_time .*positive"),
        ({"interval": S, "misfire_grace_time": 0}, "misfire_grace_time .*positive"),
        ({"interval": S, "misfire_grace_time": "soon"}, "misfire_grace_time .*timedelta"),
        ({"interval": S, "coalesce": "some"}, "Invalid coalesce 'some'"),
        ({"interval": S, "coalesce": True}, "Invalid coalesce"),
        (
            {"interval": S, "fast_forward": True, "coalesce": "all"},
            "fast_forward=True is coalesce='latest' and conflicts with coalesce='all'",
        ),
        (
            {"interval": S, "fast_forward": True, "coalesce": "earliest"},
            "conflicts with coalesce='earliest'",
        ),
        ({"interval": 10 * S, "max_jitter": 10 * S}, r"max_jitter .* shorter than the interval"),
        ({"interval": 10 * S, "max_jitter": 0}, "max_jitter .*positive"),
        (
            {"interval": 10 * S, "max_jitter": datetime.timedelta(microseconds=500)},
            "jitter unit",
        ),
        (
            {"schedule": "*/5 * * * *", "max_jitter": 5 * 60 * S},
            r"shorter than the shortest gap between runs of '\*/5 \* \* \* \*' \(0:05:00\)",
        ),
        # gaps of 1 and 59 minutes: the short one is found
        ({"schedule": "0,1 * * * *", "max_jitter": 90 * S}, "shortest gap .*0:01:00"),
        ({"schedule": "* * * * * */10", "max_jitter": 10 * S}, r"shortest gap .*\(0:00:10\)"),
    ],
)
def test_bad_policy_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pyncette().task(**options)(noop)


def test_policy_options_are_not_task_arguments() -> None:
    app = Pyncette()
    task = app.task(
        interval=10 * S, misfire_grace_time=S, coalesce="earliest", max_jitter=S, user="x"
    )(noop)
    assert task.extra_args == {"user": "x"}
    assert (task.misfire_grace_time, task.coalesce, task.max_jitter) == (S, "earliest", S)


@pytest.mark.parametrize(
    ("fast_forward", "coalesce", "expected"),
    [
        (False, None, ("all", False)),
        (True, None, ("latest", True)),
        (True, "latest", ("latest", True)),
        (False, "latest", ("latest", True)),
        (False, "earliest", ("earliest", False)),
    ],
)
def test_fast_forward_is_coalesce_latest(
    fast_forward: bool, coalesce: str | None, expected: tuple[str, bool]
) -> None:
    task = Pyncette().task(interval=S, fast_forward=fast_forward, coalesce=coalesce)(noop)
    assert (task.coalesce, task.fast_forward) == expected


def test_coalesce_latest_computes_exactly_what_fast_forward_does() -> None:
    app = Pyncette()
    for kind in ({"interval": 10 * S}, {"schedule": "* * * * *"}):
        ff = app.task(name=f"ff{len(app.tasks)}", fast_forward=True, **kind)(noop)
        latest = app.task(name=f"latest{len(app.tasks)}", coalesce="latest", **kind)(noop)
        for late in (0, 5, 10, 59, 60, 61, 3600):
            now = T0 + late * S
            assert latest.next_run(T0, now) == ff.next_run(T0, now)
            assert latest.next_run(T0, now, claimed_at=T0) == ff.next_run(T0, now)


def test_next_run_by_policy() -> None:
    app = Pyncette()
    runs = {
        policy: app.task(name=policy, interval=10 * S, coalesce=policy)(noop)
        for policy in ("all", "earliest", "latest")
    }
    # the run at 10 was claimed at 45 and ended at 47
    claimed, ended = T0 + 45 * S, T0 + 47 * S
    scheduled = T0 + 10 * S
    assert runs["all"].next_run(scheduled, ended, claimed_at=claimed) == T0 + 20 * S
    assert runs["earliest"].next_run(scheduled, ended, claimed_at=claimed) == T0 + 50 * S
    assert runs["latest"].next_run(scheduled, ended, claimed_at=claimed) == T0 + 50 * S
    # claimed on time at 10, ended at 45: earliest keeps the runs due meanwhile
    claimed = scheduled
    ended = T0 + 45 * S
    assert runs["earliest"].next_run(scheduled, ended, claimed_at=claimed) == T0 + 20 * S
    assert runs["latest"].next_run(scheduled, ended, claimed_at=claimed) == T0 + 50 * S


def _offset(key: str, units: int) -> datetime.timedelta:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return datetime.timedelta(milliseconds=int.from_bytes(digest, "big") % units)


def test_cron_jitter_is_a_stable_hash_of_name_and_nominal_time() -> None:
    app = Pyncette()
    task = app.task(schedule="* * * * *", max_jitter=30 * S)(noop)
    nominal = T0 + 60 * S
    expected = _offset(f"noop\x00{nominal.isoformat()}", 30_000)
    assert task.jitter(nominal) == expected
    assert task.initial_run(T0) == nominal + expected
    # the next nominal run follows the jittered one, whatever its offset
    following = T0 + 120 * S
    assert task.next_run(nominal + expected, nominal + expected) == following + task.jitter(
        following
    )
    # without max_jitter nothing changes
    plain = app.task(name="plain", schedule="* * * * *")(noop)
    assert plain.jitter(nominal) == datetime.timedelta(0)
    assert plain.initial_run(T0) == nominal


def test_cron_jitter_is_clamped_below_the_gap_to_the_next_run() -> None:
    # gaps of 1 and 59 minutes; a max_jitter the start-up check would refuse, set
    # afterwards as if the check had not seen the short gap
    task = Pyncette().task(schedule="0,1 * * * *", max_jitter=50 * S)(noop)
    task.max_jitter = 30 * 60 * S
    offsets = {}
    for hour in range(48):
        for minute in (0, 1):
            nominal = T0 + (hour * 60 + minute) * 60 * S
            offsets[nominal] = task.jitter(nominal)
            limit = 60 * S if minute == 0 else 30 * 60 * S
            assert datetime.timedelta(0) <= offsets[nominal] < limit
            assert task.next_run(nominal + offsets[nominal], nominal) == (
                nominal + 60 * S if minute == 0 else nominal + 59 * 60 * S
            ) + task.jitter(nominal + (60 * S if minute == 0 else 59 * 60 * S))
    assert max(o for n, o in offsets.items() if n.minute == 1) > 60 * S


def test_interval_jitter_is_a_constant_phase_per_instance() -> None:
    app = Pyncette()

    @app.dynamic_task(interval=10 * S, max_jitter=5 * S)
    async def ping(context: Context) -> None: ...

    first = ping.instantiate("a")
    phase = _offset("ping:a\x00interval", 5_000)
    assert first.initial_run(T0) == T0 + 10 * S + phase
    at = first.initial_run(T0)
    for _ in range(5):
        nxt = first.next_run(at, at)
        assert nxt == at + 10 * S
        assert nxt is not None
        at = nxt
    assert ping.instantiate("b").initial_run(T0) == T0 + 10 * S + _offset(
        "ping:b\x00interval", 5_000
    )


def test_instance_options_inherit_override_and_validate() -> None:
    app = Pyncette()

    @app.dynamic_task(interval=10 * S, fast_forward=True, max_jitter=5 * S)
    async def job(context: Context) -> None: ...

    inherited = job.instantiate("a")
    assert (inherited.coalesce, inherited.fast_forward, inherited.max_jitter) == (
        "latest",
        True,
        5 * S,
    )
    assert job.instantiate("b", coalesce="all").coalesce == "all"
    assert job.instantiate("c", coalesce="earliest", fast_forward=False).coalesce == "earliest"
    with pytest.raises(ValueError, match="conflicts with coalesce='all'"):
        job.instantiate("d", coalesce="all", fast_forward=True)
    with pytest.raises(ValueError, match="shorter than the interval"):
        job.instantiate("e", interval=2 * S)
    assert job.instantiate("f", interval=2 * S, max_jitter=S).max_jitter == S


@pytest.mark.parametrize(
    "options",
    [
        {"misfire_grace_time": 30 * S},
        {"coalesce": "earliest"},
        {"coalesce": "latest"},
        {"max_jitter": datetime.timedelta(milliseconds=2500)},
        {"misfire_grace_time": S, "coalesce": "all", "max_jitter": S, "user": "x"},
    ],
)
def test_instance_policies_survive_the_spec_round_trip(options: dict[str, Any]) -> None:
    app = Pyncette()

    @app.dynamic_task(schedule="* * * * *")
    async def job(context: Context) -> None: ...

    instance = job.instantiate("one", **options)
    stored = job.from_spec("one", instance.spec())
    legacy = job.instantiate_from_spec(instance.as_spec())
    for rebuilt in (stored, legacy):
        assert isinstance(rebuilt, Task)
        for key, value in options.items():
            actual = rebuilt.args[key] if key == "user" else getattr(rebuilt, key)
            assert actual == value, key
        assert rebuilt.initial_run(T0) == instance.initial_run(T0)
