"""Bad definitions fail early with a ValueError that names the problem."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyncette import Context, ExecutionMode, FailureMode, Pyncette, PyncetteContext
from pyncette.memory import memory_repository

S = datetime.timedelta(seconds=1)


async def noop(context: Context) -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"Exactly one of the following must be specified: .*\(got none"),
        ({"interval": S, "schedule": "* * * * *"}, "got schedule and interval; give only one of"),
        ({"schedule": "* * *"}, "5 fields"),
        ({"schedule": "61 * * * *"}, "Invalid cron"),
        ({"schedule": "* * * * * * * *"}, "5 fields"),
        (
            {"schedule": "* * * * *", "timezone": "Mars/Olympus"},
            "Task 'noop': Invalid timezone specifier 'Mars/Olympus'. Unknown timezone",
        ),
        (
            {"interval": S, "timezone": "Europe/Dublin"},
            "Timezone may only be specified when cron schedule is used",
        ),
        ({"interval": S, "payload": {1, 2}}, "Extra parameters must be JSON serializable"),
        ({"interval": S, "payload": float("nan")}, "JSON"),
        ({"interval": -S}, "positive"),
        ({"interval": S, "lease_duration": 0}, "positive"),
        ({"interval": S, "execution_mode": "sometimes"}, "ExecutionMode"),
        (
            {
                "interval": S,
                "execution_mode": ExecutionMode.AT_MOST_ONCE,
                "failure_mode": FailureMode.UNLOCK,
            },
            "not applicable when execution_mode is AT_MOST_ONCE",
        ),
        ({"execute_at": datetime.datetime(2030, 1, 1)}, "only supported for dynamic tasks"),
        ({"interval": S, "name": "x" * 256}, "longer than"),
        ({"interval": S, "name": "__static__"}, "reserved"),
    ],
)
def test_bad_task_options(options: dict[str, Any], message: str) -> None:
    app = Pyncette()
    with pytest.raises(ValueError, match=message):
        app.task(**options)(noop)


def test_duplicate_names() -> None:
    app = Pyncette()
    app.task(interval=S)(noop)
    with pytest.raises(ValueError, match="Duplicate task name 'noop'"):
        app.task(interval=2 * S)(noop)
    with pytest.raises(ValueError, match="Duplicate task name 'noop'"):
        app.dynamic_task()(noop)


def test_partition_options() -> None:
    app = Pyncette()
    with pytest.raises(ValueError, match="Partition count must be greater than or equal to 1"):
        app.partitioned_task(partition_count=0)(noop)
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        app.partitioned_task(partition_count=4, enabled_partitions=[4])(noop)
    with pytest.raises(ValueError, match="not both"):
        app.partitioned_task(partition_count=4, enabled_partitions=[1], poll_partitions=[1])(noop)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_size": 1.5}, "batch_size must be an integer"),
        ({"concurrency_limit": 0}, "concurrency_limit must be at least 1"),
        ({"poll_interval": datetime.timedelta(0)}, "poll_interval must be positive"),
        ({"instant_wakeups": "maybe"}, "instant_wakeups must be a boolean"),
    ],
)
@pytest.mark.anyio
async def test_bad_app_options_fail_at_create_as_in_1x(
    options: dict[str, Any], message: str
) -> None:
    app = Pyncette(repository_factory=memory_repository, **options)  # constructs, as in 1.x
    with pytest.raises(ValueError, match=message):
        async with app.create():
            pass


@pytest.mark.anyio
async def test_unknown_backend_option_fails_at_create() -> None:
    app = Pyncette(repository_factory=memory_repository, typo_option=1)
    with pytest.raises(ValueError, match="typo_option"):
        async with app.create():
            pass
    # options of other backends are tolerated, so configs can name several
    app = Pyncette(repository_factory=memory_repository, redis_url="redis://localhost")
    async with app.create():
        pass


def test_reserved_and_duplicate_context_names() -> None:
    app = Pyncette()

    async def fixture(app_context: PyncetteContext) -> AsyncIterator[int]:
        yield 1

    for reserved in ("task", "args", "heartbeat", "scheduled_at", "app_context", "_lease", "__x"):
        with pytest.raises(ValueError, match="Cannot use reserved name"):
            app.use_fixture(reserved, fixture)
    app.use_fixture("db", fixture)
    app.use_fixture("_metrics", fixture)  # 1.x's extras name their fixtures like this
    with pytest.raises(ValueError, match="Duplicate fixture name db"):
        app.use_fixture("db", fixture)
    with pytest.raises(ValueError, match="identifier"):
        app.use_fixture("not valid", fixture)


@pytest.mark.anyio
async def test_add_to_context_validates_names() -> None:
    app = Pyncette(repository_factory=memory_repository)
    async with app.create(context_items={"config": {"a": 1}}) as ctx:
        assert ctx.config == {"a": 1}
        with pytest.raises(ValueError, match="Key config already exists"):
            ctx.add_to_context("config", 2)
        with pytest.raises(ValueError, match="reserved"):
            ctx.add_to_context("task", 2)


def test_with_heartbeat_ratio_is_validated() -> None:
    from pyncette.utils import with_heartbeat

    with pytest.raises(ValueError, match="lease_remaining_ratio"):
        with_heartbeat(lease_remaining_ratio=1.5)


def test_dynamic_task_names_must_not_share_a_partitions_storage() -> None:
    app = Pyncette()
    app.partitioned_task(partition_count=4, name="report")(noop)
    with pytest.raises(ValueError, match="clashes with 'report'"):
        app.dynamic_task(name="report:1")(noop)
    app.dynamic_task(name="report:4")(noop)  # no partition 4: fine
    app.dynamic_task(name="x:0")(noop)
    with pytest.raises(ValueError, match="clashes with 'x:0'"):
        app.partitioned_task(partition_count=2, name="x")(noop)


@pytest.mark.anyio
async def test_create_without_fixtures_sets_none_up() -> None:
    app = Pyncette(repository_factory=memory_repository)
    started: list[str] = []

    @app.fixture()
    async def server(app_context: PyncetteContext) -> AsyncIterator[str]:
        started.append("server")
        yield "listening"

    async with app.create(fixtures=False) as ctx:
        assert not hasattr(ctx, "server")
    async with app.create() as ctx:
        assert ctx.server == "listening"
    assert started == ["server"]
