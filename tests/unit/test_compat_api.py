"""The Pyncette 1.x surface of tasks, models and errors, used the way a 1.x program and its
tests use it: ``Task.instantiate``, ``canonical_name``, task specs, ``get_next_execution``,
partitioned tasks, the 1.x model names and the 1.x wording of definition errors."""

from __future__ import annotations

import datetime
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import MagicMock

import pytest
from croniter.croniter import CroniterBadCronError

import pyncette
import pyncette.model
import pyncette.task
from pyncette import Context, ExecutionMode, FailureMode, Pyncette, PyncetteContext
from pyncette.errors import LeaseLostException, PyncetteException, TaskLockedException
from pyncette.memory import memory_repository
from pyncette.model import (
    Decorator,
    FixtureFunc,
    Lease,
    ListTasksResponse,
    PollResponse,
    QueryResponse,
    ResultType,
    TaskPage,
)
from pyncette.task import PartitionedTask, Task, _default_partition_selector

S = datetime.timedelta(seconds=1)
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


async def dummy(context: Context) -> None: ...


def memory_app() -> Pyncette:
    return Pyncette(repository_factory=memory_repository)


# -- Task.instantiate and the task's own names --------------------------------------------


def test_instantiate_makes_a_concrete_instance_of_a_dynamic_task() -> None:
    app = memory_app()

    @app.dynamic_task(username="default", lease_duration=30 * S)
    async def hello(context: Context) -> None: ...

    bill = hello.instantiate("bill", interval=5 * S, username="bill", plan="pro")
    assert isinstance(bill, Task)
    assert bill.name == "bill" and bill.parent_task is hello
    assert bill.interval == 5 * S and bill.lease_duration == 30 * S
    assert bill.extra_args == {"username": "bill", "plan": "pro"}
    assert not bill.dynamic
    default = hello.instantiate(name="someone", schedule="0 * * * *")
    assert default.extra_args == {"username": "default"} and default.schedule == "0 * * * *"


def test_instantiate_a_non_dynamic_task_is_a_value_error() -> None:
    app = memory_app()
    static = app.task(schedule="* * * * *")(dummy)
    with pytest.raises(ValueError, match="Cannot instantiate a non-dynamic task"):
        static.instantiate(name="foo")
    template = app.dynamic_task(name="template")(dummy)
    instance = template.instantiate("one", interval=S)
    with pytest.raises(ValueError, match="Cannot instantiate a non-dynamic task"):
        instance.instantiate("two", interval=S)


@pytest.mark.anyio
async def test_an_instantiated_task_addresses_the_stored_instance() -> None:
    app = memory_app()

    @app.dynamic_task()
    async def hello(context: Context) -> None: ...

    async with app.create() as ctx:
        await ctx.schedule_task(hello, "user_1", interval=300 * S, username="Alice")
        state = await ctx.get_task(hello.instantiate("user_1", interval=300 * S))
        assert state is not None
        assert state.task.name == "user_1"
        assert state.task.extra_args["username"] == "Alice"
        await ctx.unschedule_task(hello.instantiate("user_1", interval=300 * S))
        assert await ctx.get_task(hello, "user_1") is None


def test_task_func_is_the_decorated_function() -> None:
    app = memory_app()
    task = app.task(interval=S)(dummy)
    assert task.task_func is dummy and task.func is dummy

    async def other(context: Context) -> None: ...

    task.task_func = other
    assert task.func is other and task.task_func is other
    stacked = app.task(name="again", interval=S)(task)
    assert stacked.task_func is other


def test_canonical_name_escapes_colons_and_prefixes_the_template() -> None:
    app = memory_app()
    static = app.task(name="every:minute", schedule="* * * * *")(dummy)
    template = app.dynamic_task(name="per:user")(dummy)
    instance = template.instantiate("bill:1", interval=S)
    assert static.canonical_name == "every::minute"
    assert template.canonical_name == "per::user"
    assert instance.canonical_name == "per::user:bill::1"
    assert str(static) == "every::minute" and str(instance) == "per::user:bill::1"


def test_canonical_name_of_a_partitioned_instance_names_its_partition() -> None:
    app = memory_app()
    template = app.partitioned_task(name="hello:all", partition_count=32)(dummy)
    assert isinstance(template, PartitionedTask)
    partition = _default_partition_selector(32, "bill")
    instance = template.instantiate("bill", interval=S)
    assert instance.canonical_name == f"hello::all:{partition}:bill"
    assert [p.canonical_name for p in template.get_partitions()][:3] == [
        "hello::all:0",
        "hello::all:1",
        "hello::all:2",
    ]


# -- task specs ---------------------------------------------------------------------------


def test_as_spec_is_the_1x_task_spec() -> None:
    app = memory_app()

    @app.dynamic_task(username="default")
    async def hello(context: Context) -> None: ...

    at = datetime.datetime(2038, 1, 19, 3, 14, 7, tzinfo=datetime.UTC)
    assert hello.instantiate("y2k38", execute_at=at).as_spec() == {
        "name": "y2k38",
        "schedule": None,
        "interval": None,
        "execute_at": "2038-01-19T03:14:07+00:00",
        "timezone": None,
        "extra_args": {"username": "default"},
    }
    assert hello.instantiate("bill", interval=90 * S, username="bill").as_spec() == {
        "name": "bill",
        "schedule": None,
        "interval": 90.0,
        "execute_at": None,
        "timezone": None,
        "extra_args": {"username": "bill"},
    }
    assert hello.instantiate(
        "dublin", schedule="0 12 * * *", timezone="Europe/Dublin"
    ).as_spec() == {
        "name": "dublin",
        "schedule": "0 12 * * *",
        "interval": None,
        "execute_at": None,
        "timezone": "Europe/Dublin",
        "extra_args": {"username": "default"},
    }


@pytest.mark.parametrize(
    "options",
    [
        {"interval": 90 * S, "username": "bill"},
        {"schedule": "0 12 * * *", "timezone": "Europe/Dublin", "tags": ["a", "b"]},
        {"execute_at": datetime.datetime(2038, 1, 19, 3, 14, 7, tzinfo=datetime.UTC)},
        {"interval": S, "lease_duration": 5 * S, "execution_mode": ExecutionMode.AT_MOST_ONCE},
        {"interval": S, "failure_mode": FailureMode.UNLOCK, "fast_forward": True},
    ],
)
def test_instantiate_from_spec_round_trips(options: dict[str, Any]) -> None:
    app = memory_app()
    hello = app.dynamic_task(name="hello", username="default")(dummy)
    instance = hello.instantiate("someone", **options)
    spec = instance.as_spec()
    again = hello.instantiate_from_spec(spec)
    assert again.as_spec() == spec
    assert again.parent_task is hello and again.name == "someone"
    for option in (
        "schedule",
        "interval",
        "execute_at",
        "timezone",
        "execution_mode",
        "failure_mode",
        "lease_duration",
        "fast_forward",
        "extra_args",
    ):
        assert getattr(again, option) == getattr(instance, option), option


def test_only_overridden_execution_options_enter_the_spec() -> None:
    app = memory_app()
    hello = app.dynamic_task(name="hello", lease_duration=5 * S)(dummy)
    plain = hello.instantiate("plain", interval=S).as_spec()
    assert set(plain) == {"name", "schedule", "interval", "execute_at", "timezone", "extra_args"}
    tuned = hello.instantiate("tuned", interval=S, lease_duration=7 * S).as_spec()
    assert tuned["lease_duration"] == 7.0 and "execution_mode" not in tuned


# -- get_next_execution ---------------------------------------------------------------------


def test_get_next_execution_for_an_interval() -> None:
    app = memory_app()
    task = app.task(name="plain", interval=10 * S)(dummy)
    skipping = app.task(name="skipping", interval=10 * S, fast_forward=True)(dummy)
    assert task.get_next_execution(T0, None) == T0 + 10 * S
    # late by 25 s: catch up one run at a time, or skip to the first run after now
    assert task.get_next_execution(T0 + 25 * S, T0) == T0 + 10 * S
    assert skipping.get_next_execution(T0 + 25 * S, T0) == T0 + 30 * S
    assert skipping.get_next_execution(T0 + 30 * S, T0) == T0 + 40 * S
    assert skipping.get_next_execution(T0 + 5 * S, T0) == T0 + 10 * S


def test_get_next_execution_for_a_cron_schedule() -> None:
    app = memory_app()
    task = app.task(name="plain", schedule="* * * * *")(dummy)
    skipping = app.task(name="skipping", schedule="* * * * *", fast_forward=True)(dummy)
    seconds = app.task(name="seconds", schedule="* * * * * */10")(dummy)
    assert task.get_next_execution(T0 + 5 * S, None) == T0 + 60 * S
    assert task.get_next_execution(T0 + 150 * S, T0) == T0 + 60 * S
    assert skipping.get_next_execution(T0 + 150 * S, T0) == T0 + 180 * S
    assert seconds.get_next_execution(T0 + S, None) == T0 + 10 * S


def test_get_next_execution_follows_the_timezone_across_dst() -> None:
    app = memory_app()
    noon = app.task(schedule="0 12 * * *", timezone="Europe/Dublin")(dummy)
    winter = datetime.datetime(2030, 1, 10, tzinfo=datetime.UTC)
    summer = datetime.datetime(2030, 7, 10, tzinfo=datetime.UTC)
    assert noon.get_next_execution(winter, None) == winter.replace(hour=12)
    assert noon.get_next_execution(summer, None) == summer.replace(hour=11)
    nxt = noon.get_next_execution(summer, summer.replace(hour=11))
    assert nxt == summer.replace(day=11, hour=11)
    assert nxt is not None and nxt.utcoffset() == datetime.timedelta(0)


def test_get_next_execution_runs_execute_at_once() -> None:
    app = memory_app()
    hello = app.dynamic_task(name="hello")(dummy)
    at = datetime.datetime(2030, 1, 1, 14, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    once = hello.instantiate("once", execute_at=at)
    first = once.get_next_execution(T0, None)
    assert first == T0 + datetime.timedelta(hours=12)
    assert first is not None and first.tzinfo == datetime.UTC
    # an overdue one-off task runs at once: its next execution is in the past
    assert once.get_next_execution(T0 + datetime.timedelta(days=2), None) == first
    assert once.get_next_execution(T0 + datetime.timedelta(days=2), first) is None
    # a template without a schedule of its own has no execution
    assert hello.get_next_execution(T0, None) is None


# -- partitioned tasks ----------------------------------------------------------------------


def test_default_partition_selector_does_not_change() -> None:
    assert _default_partition_selector(1000000000000, "Lorem ipsum dolor sit amet") == 222413034928
    assert _default_partition_selector is pyncette.task.default_partition_selector


def test_partitioned_task_decorator_returns_a_partitioned_task() -> None:
    app = memory_app()

    @app.partitioned_task(partition_count=8, enabled_partitions=[0, 1, 2, 3])
    async def hello(context: Context) -> None: ...

    plain = app.dynamic_task(name="plain")(dummy)
    assert isinstance(hello, PartitionedTask) and isinstance(hello, Task)
    assert not isinstance(plain, PartitionedTask)
    assert hello.dynamic and hello.partition_count == 8
    assert hello.groups() == ["hello:0", "hello:1", "hello:2", "hello:3"]
    assert len(hello.all_groups()) == 8
    partitions = hello.get_partitions()
    assert [p.partition_id for p in partitions] == list(range(8))
    assert [p.enabled for p in partitions] == [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match="Use enabled_partitions to disable polling a partition"):
        partitions[0].enabled = False
    hello.enabled = False
    assert not any(p.enabled for p in partitions)


@pytest.mark.anyio
async def test_partitioned_instances_land_in_their_partition() -> None:
    app = memory_app()

    @app.partitioned_task(partition_count=5)
    async def hello(context: Context) -> None: ...

    assert isinstance(hello, PartitionedTask)
    names = ["festive_raman", "sad_germain", "determined_nash", "suspicious_matsumoto"]
    async with app.create() as ctx:
        for name in names:
            instance = await ctx.schedule_task(hello, name, interval=2 * S)
            assert instance.parent_task is hello
        for partition in hello.get_partitions():
            page = await ctx.list_tasks(partition)
            expected = [
                n for n in names if _default_partition_selector(5, n) == partition.partition_id
            ]
            assert sorted(state.task.name for state in page.tasks) == sorted(expected)
        assert len(await ctx.list_tasks(hello)) == len(names)


# -- pyncette.model -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_tasks_returns_a_list_tasks_response() -> None:
    app = memory_app()
    hello = app.dynamic_task(name="hello")(dummy)
    async with app.create() as ctx:
        for i in range(3):
            await ctx.schedule_task(hello, f"user_{i}", interval=300 * S, username=f"User{i}")
        response = await ctx.list_tasks(hello, limit=2)
        assert isinstance(response, ListTasksResponse) and isinstance(response, TaskPage)
        names = [state.task.name for state in response.tasks]
        while response.continuation_token:
            response = await ctx.list_tasks(
                hello, limit=2, continuation_token=response.continuation_token
            )
            names += [state.task.name for state in response.tasks]
    assert sorted(names) == ["user_0", "user_1", "user_2"]
    assert ListTasksResponse(tasks=[], continuation_token=None) == TaskPage([], None)


def test_result_type_and_poll_models() -> None:
    assert {member.name: member.value for member in ResultType} == {
        "MISSING": 0,
        "PENDING": 1,
        "READY": 2,
        "LOCKED": 3,
        "LEASE_MISMATCH": 4,
    }
    poll = PollResponse(result=ResultType.READY, scheduled_at=T0, lease=Lease("abc"))
    assert (poll.result, poll.scheduled_at, poll.lease) == (ResultType.READY, T0, "abc")
    task = memory_app().task(interval=S)(dummy)
    query = QueryResponse(tasks=[(task, Lease("abc"))], continuation_token=None)
    assert query.tasks[0][0] is task and query.continuation_token is None


def test_decorator_alias_is_generic() -> None:
    def named(func: FixtureFunc) -> FixtureFunc:
        return func

    decorator: Decorator[FixtureFunc] = named

    async def db(app_context: PyncetteContext) -> AsyncIterator[int]:
        yield 1

    assert decorator(db) is db
    assert pyncette.task.Decorator is pyncette.model.Decorator


def test_version_comes_from_the_package_metadata() -> None:
    assert pyncette.__version__ == importlib.metadata.version("pyncette")


# -- errors -------------------------------------------------------------------------------


def test_lease_lost_exception_names_the_task() -> None:
    template = memory_app().dynamic_task(name="per:user")(dummy)
    error = LeaseLostException(template.instantiate("bill", interval=S))
    assert isinstance(error, PyncetteException)
    assert str(error) == "Lease on the task per::user:bill was lost."
    assert error.task.name == "bill"
    assert str(LeaseLostException(template, message="gone")) == "gone"
    # 1.x tests raise it with whatever context.task is, mocks included
    mocked = MagicMock()
    assert str(mocked.task.canonical_name) in str(LeaseLostException(mocked.task))


def test_task_locked_exception_names_the_task_and_lock() -> None:
    task = memory_app().dynamic_task(name="hello")(dummy).instantiate("bill", interval=S)
    error = TaskLockedException(task)
    assert isinstance(error, PyncetteException) and error.task is task
    assert str(error) == (
        "Cannot update task hello:bill while it is locked. Use force=True to override."
    )
    until = T0 + 60 * S
    locked = TaskLockedException(task, until)
    assert locked.locked_until == until
    assert str(locked) == (
        f"Cannot update task hello:bill while it is locked. Task is locked until {until}. "
        "Use force=True to override."
    )
    assert str(TaskLockedException(task, message="busy: hello:bill")) == "busy: hello:bill"


# -- 1.x's wording of definition errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "Exactly one of the following must be specified: schedule, interval, execute_at"),
        (
            {"interval": 2 * S, "schedule": "* * * * *"},
            "Exactly one of the following must be specified: schedule, interval, execute_at",
        ),
        (
            {"execution_mode": ExecutionMode.AT_MOST_ONCE, "failure_mode": FailureMode.UNLOCK},
            "failure_mode is not applicable when execution_mode is AT_MOST_ONCE",
        ),
        (
            {"schedule": "* * * * *", "timezone": "Gondwana/Atlantis"},
            "Invalid timezone specifier 'Gondwana/Atlantis'.",
        ),
        (
            {"interval": 2 * S, "timezone": "Europe/Dublin"},
            "Timezone may only be specified when cron schedule is used",
        ),
        ({"schedule": "* * * * *", "extra_arg": object()}, "Extra parameters must be JSON"),
        ({"execute_at": T0}, "execute_at is only supported for dynamic tasks"),
    ],
)
def test_definition_errors_use_1x_wording(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        memory_app().task(**options)(dummy)


def test_instance_errors_use_1x_wording() -> None:
    hello = memory_app().dynamic_task(name="hello")(dummy)
    with pytest.raises(ValueError, match="Timezone may only be specified when cron schedule"):
        hello.instantiate("x", interval=S, timezone="Europe/Dublin")
    with pytest.raises(ValueError, match="Exactly one of the following must be specified"):
        hello.instantiate("x")


@pytest.mark.parametrize("schedule", ["abracadabra", "61 * * * *", "* * * * * * * *"])
def test_bad_cron_is_croniters_error_and_a_value_error(schedule: str) -> None:
    with pytest.raises(CroniterBadCronError) as caught:
        memory_app().task(schedule=schedule)(dummy)
    assert isinstance(caught.value, ValueError)


def test_partition_count_below_one() -> None:
    app = memory_app()
    with pytest.raises(ValueError, match="Partition count must be greater than or equal to 1"):

        @app.partitioned_task(partition_count=0)
        async def hello(context: Context) -> None: ...


def test_duplicate_task_name() -> None:
    app = memory_app()
    app.task(interval=2 * S, name="task1")(dummy)
    with pytest.raises(ValueError, match="Duplicate task name"):
        app.task(interval=2 * S, name="task1")(dummy)


def test_unable_to_determine_name_for_the_task() -> None:
    nameless: Any = object()
    with pytest.raises(ValueError, match="Unable to determine name for the task"):
        memory_app().task(schedule="* * * * *")(nameless)


def test_unable_to_determine_name_for_the_fixture() -> None:
    nameless: Any = object()
    with pytest.raises(ValueError, match="Unable to determine name for the fixture"):
        memory_app().fixture()(nameless)


@pytest.mark.anyio
async def test_unschedule_without_an_instance_name() -> None:
    app = memory_app()
    hello = app.dynamic_task(name="hello")(dummy)
    with pytest.raises(ValueError, match="instance name must be provided"):
        async with app.create() as ctx:
            await ctx.unschedule_task(hello)
