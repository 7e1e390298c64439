"""The helpers every backend shares: URL masking, continuation tokens, epoch times,
option validators, the back-off policy and its retry loop."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import make_url

from pyncette import codec, retry
from pyncette.clock import real_sleep
from pyncette.dynamodb.client import Caller
from pyncette.dynamodb.items import decode_list_token, encode_list_token
from pyncette.dynamodb.settings import DynamoDBSettings
from pyncette.model import ContinuationToken
from pyncette.mysql import MySQLSettings
from pyncette.options import boolean, integer, optional_boolean, url
from pyncette.postgres import PostgresSettings
from pyncette.redis.connection import DriverBackoff, _client_options
from pyncette.redis.settings import RedisSettings
from pyncette.repository import Registration, fold_registrations
from pyncette.sqlite import SqliteSettings, sqlite_repository
from pyncette.timeutil import EPOCH, batch_instants, duration_us, from_epoch_us, to_epoch_us
from pyncette.urls import mask_url

UTC = datetime.UTC
S = datetime.timedelta(seconds=1)

# -- URL masking -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("postgresql://user:s3cret@db:5432/app", "postgresql://user:***@db:5432/app"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:p@ss:word@cache/0", "rediss://user:***@cache/0"),
        ("redis://cache?db=1&password=s3cret", "redis://cache?db=1&password=***"),
        ("redis://user@cache:6379", "redis://user@cache:6379"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
        ("s3cret", "<unparseable URL>"),
        ("http://[::1", "<unparseable URL>"),
    ],
)
def test_mask_url_hides_passwords_and_keeps_the_rest(raw: str, masked: str) -> None:
    assert mask_url(raw) == masked


def test_mask_url_takes_sqlalchemy_urls() -> None:
    assert mask_url(make_url("mysql+asyncmy://u:s3cret@h/db")) == "mysql+asyncmy://u:***@h/db"


def test_every_backend_masks_through_the_same_function() -> None:
    settings = RedisSettings.from_options({"redis_url": "redis://u:s3cret@h:1/0"})
    assert settings.masked_url == mask_url(settings.url) == "redis://u:***@h:1/0"
    with pytest.raises(ValueError, match="dynamodb_endpoint") as raised:
        DynamoDBSettings.from_options({"dynamodb_endpoint": "ftp://u:s3cret@h"})
    assert "s3cret" not in str(raised.value)


# -- continuation tokens ---------------------------------------------------------------


@pytest.mark.parametrize("value", [["a", 1], {"name": "ünï", "n": None}, "x" * 300, 0])
def test_tokens_round_trip_and_are_url_safe(value: Any) -> None:
    token = codec.encode_token(value)
    assert codec.decode_token(token) == value
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@pytest.mark.parametrize(
    "token",
    ["not a token", "", "ünï", base64.urlsafe_b64encode(b"{not json").decode(), 42, None],
)
def test_tampered_tokens_are_value_errors(token: object) -> None:
    with pytest.raises(ValueError, match="continuation token"):
        codec.decode_token(token)


def test_a_truncated_token_is_a_value_error() -> None:
    token = codec.encode_token({"task_id": "some-instance"})
    with pytest.raises(ValueError, match="continuation token"):
        codec.decode_token(token[:-3])


def test_dynamodb_list_tokens_hold_a_row_name() -> None:
    assert decode_list_token(encode_list_token("ünï:1")) == "ünï:1"
    for value in [{"task_id": ""}, {"task_id": 3}, {"other": "a"}, ["a"], "a"]:
        with pytest.raises(ValueError, match="continuation token"):
            decode_list_token(codec.encode_token(value))
    with pytest.raises(ValueError, match="continuation token"):
        decode_list_token(ContinuationToken("not a token"))


# -- epoch times ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(1, 1, 1, tzinfo=UTC),
        EPOCH,
    ],
)
def test_epoch_microseconds_round_trip_exactly(moment: datetime.datetime) -> None:
    back = from_epoch_us(to_epoch_us(moment))
    assert back == moment
    assert back.utcoffset() == datetime.timedelta(0)


def test_epoch_microseconds_are_utc_whatever_the_zone() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2030, 1, 1, 2, 0, 0, 1, tzinfo=plus_two)
    assert to_epoch_us(moment) == to_epoch_us(datetime.datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    assert from_epoch_us(to_epoch_us(moment)).tzinfo is UTC
    assert to_epoch_us(EPOCH + datetime.timedelta(microseconds=1)) == 1
    assert from_epoch_us(-1) == EPOCH - datetime.timedelta(microseconds=1)


def test_batch_instants_convert_as_from_epoch_us_and_share_repeated_values() -> None:
    convert = batch_instants()
    first = convert(1_893_456_000_000_001)
    assert first == from_epoch_us(1_893_456_000_000_001)
    assert convert(1_893_456_000_000_001) is first  # converted once
    assert convert(-1) == EPOCH - datetime.timedelta(microseconds=1)
    assert batch_instants()(1_893_456_000_000_001) is not first  # a memo per batch


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(TypeError):
        to_epoch_us(datetime.datetime(2030, 1, 1))


def test_durations_in_microseconds() -> None:
    assert duration_us(datetime.timedelta(seconds=60, microseconds=7)) == 60_000_007
    assert duration_us(datetime.timedelta(0)) == 0


# -- option validators ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("yes", True),
        (" Yes ", True),
        ("on", True),
        ("true", True),
        ("1", True),
        ("no", False),
        ("OFF", False),
        ("false", False),
        ("0", False),
    ],
)
def test_boolean_spellings(value: object, expected: bool) -> None:
    assert boolean("flag", value) is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, 1.0, None, [True]])
def test_other_values_are_not_booleans(value: object) -> None:
    with pytest.raises(ValueError, match="flag must be a boolean"):
        boolean("flag", value)


def test_every_backend_spells_flags_alike() -> None:
    """``"yes"`` is a flag for every backend (it was an error for DynamoDB and Redis)."""
    assert PostgresSettings.from_options({"postgres_skip_table_create": "yes"}).skip_table_create
    assert MySQLSettings.from_options(
        {"mysql_database": "d", "mysql_skip_table_create": "yes"}
    ).skip_table_create
    assert DynamoDBSettings.from_options({"dynamodb_skip_table_create": "yes"}).skip_table_create
    assert RedisSettings.from_options({"redis_cluster": "yes"}).cluster is True
    assert RedisSettings.from_options({"redis_cluster": "off"}).cluster is False
    assert optional_boolean("redis_cluster", None) is None


@pytest.mark.parametrize(
    ("parse", "option"),
    [
        (PostgresSettings.from_options, "postgres_skip_table_create"),
        (DynamoDBSettings.from_options, "dynamodb_skip_table_create"),
        (RedisSettings.from_options, "redis_cluster"),
    ],
)
def test_every_backend_refuses_other_flags_alike(parse: Any, option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be a boolean, got 'maybe'"):
        parse({option: "maybe"})


def test_integers_take_digit_strings_and_bounds() -> None:
    assert integer("n", "3306") == 3306
    assert integer("n", 5, minimum=5, maximum=5) == 5
    for value, message in [
        (True, "n must be an integer"),
        (1.5, "n must be an integer"),
        ("x", "n must be an integer"),
        (0, "n must be >= 1"),
        (70000, "n must be between 1 and 65535"),
    ]:
        with pytest.raises(ValueError, match=message):
            integer("n", value, maximum=65535 if value == 70000 else None)


def test_urls_are_checked_for_scheme_and_host() -> None:
    assert url("u", "http://h:8000", schemes=("http",), host=True) == "http://h:8000"
    assert url("u", "unix:///s", schemes=("unix",), host=False) == "unix:///s"
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        url("u", "ftp://h", schemes=("http", "https"), host=True)
    with pytest.raises(ValueError, match="host name"):
        url("u", "http://", schemes=("http",), host=True)
    with pytest.raises(ValueError, match="u must be a non-empty URL"):
        url("u", 5, schemes=("http",), host=False)


def test_every_backend_builds_frozen_settings_from_options() -> None:
    defaults: list[Any] = [
        SqliteSettings.from_options({}),
        PostgresSettings.from_options({}),
        MySQLSettings.from_options({"mysql_database": "d"}),
        RedisSettings.from_options({}),
        DynamoDBSettings.from_options({}),
    ]
    assert [getattr(s, "table_name", None) for s in defaults] == [
        "pyncette",
        "pyncette",
        "pyncette",
        None,
        "pyncette",
    ]
    assert [s.pool_size for s in defaults[1:3]] == [10, 10]
    assert str(SqliteSettings("tasks.db").url) == "sqlite+aiosqlite:///tasks.db"
    for settings in defaults:
        first = dataclasses.fields(settings)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, first, "other")
    with pytest.raises(ValueError, match=r"Unknown option.*postgres_tabel_name"):
        PostgresSettings.from_options({"postgres_tabel_name": "x"})


def test_mysql_settings_never_show_the_password() -> None:
    settings = MySQLSettings.from_options(
        {"mysql_database": "d", "mysql_password": "s3cret", "mysql_port": "3307"}
    )
    assert settings.url.port == 3307
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.url)
    with pytest.raises(ValueError, match="mysql_password must be a string") as raised:
        MySQLSettings.from_options({"mysql_database": "d", "mysql_password": b"s3cret"})
    assert "s3cret" not in str(raised.value)


# -- back-off and retries ------------------------------------------------------------


def test_backoff_delays_grow_to_the_maximum() -> None:
    policy = retry.Backoff(initial=0.1, factor=2.0, maximum=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay(0) == 0.1
    assert policy.delay(100_000) == 0.5  # no OverflowError after a long outage


def test_jittered_delays_stay_between_half_and_all_of_the_step() -> None:
    policy = retry.Backoff(initial=1.0, factor=2.0, maximum=4.0, jitter=True)
    delays = [policy.delay(3) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_attempts_within_a_deadline() -> None:
    policy = retry.Backoff(initial=1.0, factor=2.0, maximum=4.0)
    assert policy.attempts_within(0.5) == 1
    assert policy.attempts_within(1.0) == 2  # waits 1
    assert policy.attempts_within(7.0) == 4  # waits 1 + 2 + 4
    assert policy.attempts_within(15.0) == 6  # ... + 4 + 4
    assert retry.STARTUP.attempts_within(30.0) > 20


def test_named_defaults() -> None:
    assert retry.THROTTLED_ATTEMPTS == 8
    assert retry.SQL_RECONNECT_ATTEMPTS == 2
    assert retry.REDIS_RECONNECT_ATTEMPTS == 4
    assert all(
        policy.jitter
        for policy in (retry.STARTUP, retry.CONFLICT, retry.RECONNECT, retry.THROTTLED)
    )


@pytest.mark.anyio
async def test_retry_waits_with_the_given_sleep_and_gives_up() -> None:
    waits: list[float] = []
    told: list[tuple[int, float]] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise OSError(f"call {calls}")

    with pytest.raises(OSError, match="call 3"):
        await retry.retry(
            failing,
            policy=retry.Backoff(initial=1.0, factor=3.0, maximum=5.0),
            attempts=3,
            sleep=sleep,
            on_retry=lambda attempt, _, delay: told.append((attempt, delay)),
        )
    assert waits == [1.0, 3.0]
    assert told == [(1, 1.0), (2, 3.0)]


@pytest.mark.anyio
async def test_retry_stops_where_retry_if_says_so() -> None:
    seen: list[int] = []

    async def sleep(seconds: float) -> None:
        pass

    async def failing() -> None:
        raise KeyError("x")

    def retry_if(error: BaseException, failures: int) -> bool:
        seen.append(failures)
        return failures < 2

    with pytest.raises(KeyError):
        await retry.retry(failing, policy=retry.POLL, attempts=10, sleep=sleep, retry_if=retry_if)
    assert seen == [1, 2]
    with pytest.raises(ValueError, match="not retried"):
        await retry.retry(
            lambda: _raise(ValueError("not retried")),
            policy=retry.POLL,
            attempts=10,
            sleep=sleep,
            retry_on=(KeyError,),
        )


async def _raise(error: Exception) -> None:
    raise error


@pytest.mark.anyio
async def test_retry_counts_a_failure_the_caller_already_had_as_the_first_attempt() -> None:
    calls: list[int] = []
    told: list[int] = []

    async def sleep(seconds: float) -> None:
        pass

    async def succeeding() -> str:
        calls.append(len(calls) + 1)
        return "done"

    result = await retry.retry(
        succeeding,
        policy=retry.POLL,
        attempts=3,
        sleep=sleep,
        on_retry=lambda attempt, _, delay: told.append(attempt),
        failed=OSError("the caller's own try"),
    )
    assert (result, calls, told) == ("done", [1], [1])
    with pytest.raises(OSError, match="the caller's own try"):
        await retry.retry(
            succeeding,
            policy=retry.POLL,
            attempts=1,
            sleep=sleep,
            failed=OSError("the caller's own try"),
        )
    with pytest.raises(KeyError):  # not one of retry_on: raised as it is, nothing called
        await retry.retry(
            succeeding,
            policy=retry.POLL,
            attempts=5,
            sleep=sleep,
            retry_on=(OSError,),
            failed=KeyError("x"),
        )
    assert calls == [1]


class _Failing:
    """``connections`` whose runs raise the given errors in turn, then succeed."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.runs = 0

    async def run(self, operation: Any) -> str:
        self.runs += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ran"


def _dropped() -> Exception:
    from sqlalchemy import exc

    return exc.DBAPIError("SELECT 1", {}, ConnectionError("gone"), connection_invalidated=True)


def _deadlock() -> Exception:
    from sqlalchemy import exc

    return exc.IntegrityError("INSERT", {}, Exception("duplicate key"))


@pytest.mark.anyio
async def test_sql_runs_retry_a_dropped_connection_inside_each_conflict_attempt() -> None:
    from sqlalchemy import exc

    from pyncette.sql.engine import run_retrying

    # the caller's own try was dropped: one more run on a fresh connection
    connections = _Failing()
    assert await run_retrying(connections, None, attempts=1, failed=_dropped()) == "ran"  # type: ignore[arg-type]
    assert connections.runs == 1
    # dropped twice in one conflict attempt: that attempt fails, and without more
    # conflict attempts the error is raised
    connections = _Failing(_dropped())
    with pytest.raises(exc.DBAPIError):
        await run_retrying(connections, None, attempts=1, failed=_dropped())  # type: ignore[arg-type]
    assert connections.runs == 1
    # a conflict, then a dropped connection, then success: three conflict attempts allowed
    connections = _Failing(_dropped())
    assert await run_retrying(connections, None, attempts=3, failed=_deadlock()) == "ran"  # type: ignore[arg-type]
    assert connections.runs == 2
    # a conflict with a single attempt: raised, not run again
    connections = _Failing()
    with pytest.raises(exc.IntegrityError):
        await run_retrying(connections, None, attempts=1, failed=_deadlock())  # type: ignore[arg-type]
    assert connections.runs == 0


def test_redis_retries_with_the_driver_and_pyncettes_numbers() -> None:
    options = _client_options(RedisSettings())
    driver_retry = options["retry"]
    assert driver_retry.get_retries() == retry.REDIS_RECONNECT_ATTEMPTS - 1
    backoff = driver_retry._backoff
    assert backoff == DriverBackoff(retry.RECONNECT)
    fixed = DriverBackoff(retry.Backoff(initial=0.5, factor=2.0, maximum=1.5))
    assert [fixed.compute(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


def test_dynamodb_retries_with_pyncettes_numbers() -> None:
    caller = Caller("here", anyio.CapacityLimiter(1))
    assert (caller.backoff, caller.attempts, caller.connection_attempts) == (
        retry.THROTTLED,
        retry.THROTTLED_ATTEMPTS,
        retry.DYNAMODB_RECONNECT_ATTEMPTS,
    )


@pytest.mark.anyio
async def test_sqlite_busy_at_start_up_waits_in_real_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Switching a busy file to WAL is retried while another connection writes, with
    waits that do not go through ``asyncio.sleep`` (a 1.x-style harness makes that one
    virtual and would never resolve it inside a repository call)."""
    path = tmp_path / "busy.db"
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("CREATE TABLE t (x)")
    blocker.execute("BEGIN IMMEDIATE")  # SQLite refuses the switch to WAL at once
    release = threading.Timer(0.3, blocker.execute, ("COMMIT",))

    async def virtual_sleep(seconds: float) -> None:
        raise AssertionError("a repository call waited through asyncio.sleep")

    monkeypatch.setattr(asyncio, "sleep", virtual_sleep)
    release.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="pyncette.sql.engine"):
            async with sqlite_repository(sqlite_database=str(path)) as repo:
                assert await repo.get("g", "a") is None
    finally:
        release.join()
        blocker.close()
    assert "SQLite file busy while switching to WAL" in caplog.text
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        check.close()


@pytest.mark.anyio
async def test_real_sleep_ignores_a_patched_asyncio_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(seconds: float) -> None:
        raise AssertionError("patched")

    monkeypatch.setattr(asyncio, "sleep", never)
    await real_sleep(0.001)


# -- registrations -------------------------------------------------------------------


def test_registrations_of_one_name_fold_as_if_written_in_order() -> None:
    t0 = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    regs = [
        Registration("a", "1", t0 + 5 * S, 10 * S),
        Registration("b", None, t0, 10 * S),
        Registration("a", "2", t0 + 1 * S, 20 * S),
        Registration("a", "3", t0 + 9 * S, 30 * S),
    ]
    assert fold_registrations(regs, force=False) == [
        Registration("a", "3", t0 + 1 * S, 30 * S),
        Registration("b", None, t0, 10 * S),
    ]
    assert fold_registrations(regs, force=True) == [regs[3], regs[1]]


def test_the_event_bus_is_active_exactly_while_somebody_listens() -> None:
    from pyncette.events import Event, EventBus, TickStarted

    NOON = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)

    bus = EventBus()
    seen: list[Event] = []
    assert not bus.active
    first = bus.subscribe(seen.append, TickStarted)
    second = bus.subscribe(seen.append)
    assert bus.active
    first()
    assert bus.active
    bus.emit(TickStarted(NOON))
    second()
    second()  # a second cancellation changes nothing
    assert not bus.active
    bus.emit(TickStarted(NOON))
    assert seen == [TickStarted(NOON)]
