"""Task definitions: static tasks, dynamic task templates and their instances."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pyncette.model import Context, ExecutionMode, FailureMode, PartitionSelector, TaskFunc
from pyncette.schedule import UTC, next_cron, parse_timezone, to_utc, validate_cron

STATIC_GROUP = "__static__"
"""The repository group holding every static task of an app (a reserved task name)."""

MAX_NAME_LENGTH = 255
_PROTOTYPE_CACHE_SIZE = 1024

_SCHEDULE_KINDS = ("schedule", "interval", "execute_at")
_OPTION_NAMES = frozenset(
    {
        *_SCHEDULE_KINDS,
        "timezone",
        "execution_mode",
        "failure_mode",
        "lease_duration",
        "fast_forward",
        "enabled",
    }
)


def default_partition_selector(partition_count: int, task_id: str) -> int:
    """Pyncette's partition selector: SHA-1 of the name, scaled onto the partitions."""
    digest = int.from_bytes(hashlib.sha1(task_id.encode("utf-8")).digest(), "big")  # noqa: S324
    return (digest * partition_count) >> 160


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid {kind} name {name!r}: expected a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Invalid {kind} name: longer than {MAX_NAME_LENGTH} characters")
    return name


def _as_timedelta(option: str, value: object) -> datetime.timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.timedelta(seconds=value)
    if not isinstance(value, datetime.timedelta):
        raise ValueError(f"Invalid {option} {value!r}: expected a timedelta")
    if value <= datetime.timedelta(0):
        raise ValueError(f"Invalid {option} {value!r}: must be positive")
    return value


def _as_enum(option: str, enum_type: type[ExecutionMode] | type[FailureMode], value: object) -> Any:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str) and value in enum_type.__members__:
        return enum_type[value]
    raise ValueError(f"Invalid {option} {value!r}: expected a {enum_type.__name__}")


class Task:
    """A task as declared with ``@app.task``, ``@app.dynamic_task`` or
    ``@app.partitioned_task``, or a concrete instance of a dynamic task.

    Calling a task calls the decorated function.
    """

    def __init__(
        self,
        *,
        name: str,
        func: TaskFunc,
        dynamic: bool = False,
        parent_task: Task | None = None,
        schedule: str | None = None,
        interval: datetime.timedelta | None = None,
        execute_at: datetime.datetime | None = None,
        timezone: str | None = None,
        execution_mode: ExecutionMode = ExecutionMode.AT_LEAST_ONCE,
        failure_mode: FailureMode = FailureMode.NONE,
        lease_duration: datetime.timedelta = datetime.timedelta(seconds=60),
        fast_forward: bool = False,
        enabled: bool = True,
        partition_count: int | None = None,
        partition_selector: PartitionSelector | None = None,
        enabled_partitions: Iterable[int] | None = None,
        **extra_args: Any,
    ) -> None:
        self.name = _check_name("instance" if parent_task else "task", name)
        if not callable(func):
            raise ValueError(f"Task {name!r}: {func!r} is not callable")
        self.func = func
        self.dynamic = dynamic
        self.parent_task = parent_task
        self.schedule = schedule
        self.interval = _as_timedelta("interval", interval) if interval is not None else None
        if execute_at is not None and not isinstance(execute_at, datetime.datetime):
            raise ValueError(f"Task {name!r}: execute_at must be a datetime, got {execute_at!r}")
        self.execute_at = to_utc(execute_at) if execute_at is not None else None
        self.timezone = timezone
        self.execution_mode: ExecutionMode = _as_enum(
            "execution_mode", ExecutionMode, execution_mode
        )
        self.failure_mode: FailureMode = _as_enum("failure_mode", FailureMode, failure_mode)
        self.lease_duration = _as_timedelta("lease_duration", lease_duration)
        self.fast_forward = bool(fast_forward)
        self.enabled = bool(enabled)
        self.extra_args = extra_args
        self._tzinfo = parse_timezone(timezone) if timezone is not None else None

        kinds = [kind for kind in _SCHEDULE_KINDS if getattr(self, kind) is not None]
        if len(kinds) > 1:
            raise ValueError(
                f"Task {name!r}: give only one of schedule, interval or execute_at "
                f"(got {' and '.join(kinds)})"
            )
        if not kinds and not dynamic:
            raise ValueError(f"Task {name!r}: one of schedule, interval or execute_at is required")
        if schedule is not None:
            validate_cron(schedule)
        if timezone is not None and schedule is None and not dynamic:
            raise ValueError(f"Task {name!r}: timezone is only valid with a cron schedule")
        if execute_at is not None and not (dynamic or parent_task):
            raise ValueError(f"Task {name!r}: execute_at is only valid for dynamic task instances")
        if (
            self.failure_mode is not FailureMode.NONE
            and self.execution_mode is ExecutionMode.AT_MOST_ONCE
        ):
            raise ValueError(f"Task {name!r}: failure_mode is only valid with AT_LEAST_ONCE")
        try:
            self._args_json = json.dumps(extra_args, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Task {name!r}: arguments must be JSON-serialisable ({exc})"
            ) from None

        self.partition_count = partition_count
        self.partition_selector: PartitionSelector = (
            partition_selector or default_partition_selector
        )
        if partition_count is not None:
            if isinstance(partition_count, bool) or not isinstance(partition_count, int):
                raise ValueError(f"Task {name!r}: partition_count must be an integer")
            if partition_count < 1:
                raise ValueError(f"Task {name!r}: partition_count must be at least 1")
            enabled_list = (
                list(range(partition_count))
                if enabled_partitions is None
                else list(enabled_partitions)
            )
            bad = [
                p for p in enabled_list if not isinstance(p, int) or not 0 <= p < partition_count
            ]
            if bad:
                raise ValueError(
                    f"Task {name!r}: enabled partitions {bad} outside 0..{partition_count - 1}"
                )
            self.enabled_partitions: list[int] = sorted(set(enabled_list))
        else:
            self.enabled_partitions = []

    # -- identity -------------------------------------------------------------------

    @property
    def args(self) -> dict[str, Any]:
        return self.extra_args

    @property
    def is_instance(self) -> bool:
        return self.parent_task is not None

    @property
    def template(self) -> Task:
        return self.parent_task or self

    def groups(self) -> list[str]:
        """Repository groups holding this template's instances (one per polled partition)."""
        if self.partition_count is None:
            return [self.name]
        return [f"{self.name}:{p}" for p in self.enabled_partitions]

    def all_groups(self) -> list[str]:
        if self.partition_count is None:
            return [self.name]
        return [f"{self.name}:{p}" for p in range(self.partition_count)]

    def group_for(self, instance_name: str) -> str:
        """The repository group an instance of this template is stored in."""
        if self.partition_count is None:
            return self.name
        partition = self.partition_selector(self.partition_count, instance_name)
        if not isinstance(partition, int) or not 0 <= partition < self.partition_count:
            raise ValueError(
                f"Partition selector of {self.name!r} returned {partition!r} for "
                f"{instance_name!r}; expected 0..{self.partition_count - 1}"
            )
        return f"{self.name}:{partition}"

    # -- scheduling -----------------------------------------------------------------

    def initial_run(self, now: datetime.datetime) -> datetime.datetime:
        """When a newly registered task first runs."""
        if self.execute_at is not None:
            return self.execute_at
        nxt = self.next_run(now, now)
        assert nxt is not None
        return nxt

    def next_run(
        self, scheduled_at: datetime.datetime, now: datetime.datetime
    ) -> datetime.datetime | None:
        """The run after the one scheduled at ``scheduled_at``; ``None`` for one-off tasks.

        Without ``fast_forward`` missed runs are caught up one by one; with it the next
        run is the first one after ``now``.
        """
        if self.interval is not None:
            nxt = scheduled_at + self.interval
            if self.fast_forward and nxt <= now:
                missed = math.floor((now - scheduled_at) / self.interval)
                nxt = scheduled_at + self.interval * (missed + 1)
            return nxt
        if self.schedule is not None:
            after = max(scheduled_at, now) if self.fast_forward else scheduled_at
            return next_cron(self.schedule, self._tzinfo, after)
        return None

    # -- dynamic instances ----------------------------------------------------------

    def make_instance(self, instance_name: str, overrides: dict[str, Any]) -> Task:
        """A concrete instance of this dynamic template with ``overrides`` applied."""
        if not self.dynamic:
            raise ValueError(f"Task {self.name!r} is not a dynamic task")
        options: dict[str, Any] = {
            "schedule": self.schedule,
            "interval": self.interval,
            "execute_at": self.execute_at,
            "timezone": self.timezone,
            "execution_mode": self.execution_mode,
            "failure_mode": self.failure_mode,
            "lease_duration": self.lease_duration,
            "fast_forward": self.fast_forward,
        }
        args = dict(self.extra_args)
        if any(overrides.get(kind) is not None for kind in _SCHEDULE_KINDS):
            for kind in _SCHEDULE_KINDS:
                options[kind] = None
        for key, value in overrides.items():
            if key == "enabled":
                raise ValueError("enabled cannot be set on a dynamic task instance")
            if key in _OPTION_NAMES:
                options[key] = value
            else:
                args[key] = value
        if options["timezone"] is not None and options["schedule"] is None:
            raise ValueError(f"Task {instance_name!r}: timezone is only valid with a cron schedule")
        instance = Task(name=instance_name, func=self.func, parent_task=self, **options, **args)
        if instance.schedule is None and instance.interval is None and instance.execute_at is None:
            raise ValueError(
                f"Task {instance_name!r}: one of schedule, interval or execute_at is required"
            )
        instance._overrides = overrides
        return instance

    _overrides: dict[str, Any] | None = None

    def spec(self) -> str:
        """The stored JSON form of an instance: what ``schedule_task`` was given."""
        encoded: dict[str, Any] = {}
        for key, value in (self._overrides or {}).items():
            if isinstance(value, datetime.timedelta):
                value = {"seconds": value.total_seconds()}
            elif isinstance(value, datetime.datetime):
                value = {"at": to_utc(value).isoformat()}
            elif isinstance(value, (ExecutionMode, FailureMode)):
                value = value.name
            encoded[key] = value
        return json.dumps(encoded, sort_keys=True, allow_nan=False)

    def from_spec(self, instance_name: str, spec: str) -> Task:
        """Rebuild an instance of this template from its stored spec.

        Instances sharing a spec (the usual case for queues of one-off tasks) are parsed
        and validated once; later ones are shallow copies with their own name.
        """
        prototypes = self.__dict__.setdefault("_prototypes", {})
        prototype = prototypes.get(spec)
        if prototype is None:
            prototype = self._parse_spec(instance_name, spec)
            if len(prototypes) >= _PROTOTYPE_CACHE_SIZE:
                prototypes.clear()
            prototypes[spec] = prototype
        instance = object.__new__(Task)
        instance.__dict__.update(prototype.__dict__)
        instance.name = instance_name
        return instance

    def _parse_spec(self, instance_name: str, spec: str) -> Task:
        raw = json.loads(spec)
        overrides: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("interval", "lease_duration") and isinstance(value, dict):
                value = datetime.timedelta(seconds=value["seconds"])
            elif key == "execute_at" and isinstance(value, dict):
                value = datetime.datetime.fromisoformat(value["at"])
            overrides[key] = value
        return self.make_instance(instance_name, overrides)

    # -- calling --------------------------------------------------------------------

    def __call__(self, context: Context) -> Awaitable[None]:
        return self.func(context)

    def __repr__(self) -> str:
        kind = "instance" if self.parent_task else ("dynamic task" if self.dynamic else "task")
        return f"<{kind} {self.name!r}>"


def make_task(**options: Any) -> Task:
    """The task a decorator declares: a :class:`Task` built from the decorator's options."""
    return Task(**options)


def unwrap(func: TaskFunc | Task) -> TaskFunc:
    """The function under a task, so that decorators can be stacked."""
    return func.func if isinstance(func, Task) else func


Decorator = Callable[[TaskFunc | Task], Task]

__all__ = [
    "STATIC_GROUP",
    "UTC",
    "Decorator",
    "Task",
    "default_partition_selector",
    "make_task",
    "unwrap",
]
