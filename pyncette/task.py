"""Task definitions: static tasks, dynamic task templates and their instances."""

from __future__ import annotations

import datetime
import functools
import hashlib
import inspect
import json
import math
from collections.abc import Awaitable, Iterable
from typing import Any, Literal, get_args

from pyncette.model import (
    PAUSED_AT,
    Context,
    Decorator,
    ExecutionMode,
    FailureMode,
    PartitionSelector,
    Retry,
    SyncTaskFunc,
    TaskFunc,
)
from pyncette.options import boolean
from pyncette.schedule import UTC, next_cron, parse_timezone, to_utc, validate_cron
from pyncette.timeutil import to_epoch_us

STATIC_GROUP = "__static__"
"""The repository group holding every static task of an app (a reserved task name)."""

MAX_NAME_LENGTH = 255
RUN_PREFIX = "__run__:"
"""Stored rows named with this prefix are extra runs of a task or instance (queued by
``trigger_task`` or ``backfill_task``); task and instance names may not start with it."""
MAX_DURATION = datetime.timedelta(days=36500)
"""The longest interval or lease a task may have (100 years)."""
LATEST = PAUSED_AT  # runs must come before it; a paused task's row is parked there
"""``execute_at`` must be sooner: every backend stores times before it exactly."""
MAX_PARTITIONS = 10_000
MAX_ARGUMENTS_BYTES = 350 * 1024
"""The largest task arguments (as JSON) a task or instance may carry."""
RESERVED_ARGUMENTS = frozenset(
    {
        "name",
        "func",
        "dynamic",
        "parent_task",
        "partition_count",
        "partition_selector",
        "enabled_partitions",
    }
)
"""Keywords of ``Task`` itself, which cannot be task arguments."""
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
        "misfire_grace_time",
        "coalesce",
        "max_jitter",
        "retry",
        "overlap",
    }
)
_EXECUTION_OPTIONS = (
    "execution_mode",
    "failure_mode",
    "lease_duration",
    "fast_forward",
    "misfire_grace_time",
    "coalesce",
    "max_jitter",
    "retry",
    "overlap",
)
"""Options an instance may override that Pyncette 1.x's task spec has no field for."""
_DURATION_OPTIONS = ("interval", "lease_duration", "misfire_grace_time", "max_jitter")
"""Options stored in an instance's spec as ``{"seconds": ...}``."""

Coalesce = Literal["all", "earliest", "latest"]
"""What a task does with several missed runs (see :attr:`Task.coalesce`)."""
COALESCE_POLICIES: tuple[str, ...] = get_args(Coalesce)
Overlap = Literal["skip", "buffer_one", "allow"]
"""What happens to runs that fall due while a run of the same task is still going on
(see :attr:`Task.overlap`)."""
OVERLAP_POLICIES: tuple[str, ...] = get_args(Overlap)
MAX_BUFFER_STEPS = 10_000
"""Cron runs stepped through at most to find the last one due during a run."""
JITTER_UNIT = datetime.timedelta(milliseconds=1)
"""Jitter offsets are whole milliseconds: every backend stores them exactly."""
CRON_GAP_SAMPLES = 16
"""Runs of a cron schedule inspected when ``max_jitter`` is checked against it."""
_CRON_GAP_REFERENCE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def default_partition_selector(partition_count: int, task_id: str) -> int:
    """Pyncette's partition selector: SHA-1 of the name, scaled onto the partitions."""
    digest = int.from_bytes(hashlib.sha1(task_id.encode("utf-8")).digest(), "big")  # noqa: S324
    return (digest * partition_count) >> 160


_default_partition_selector = default_partition_selector  # Pyncette 1.x's name for it


def _escape(name: str) -> str:
    return name.replace(":", "::")


def _check_name(kind: str, name: object) -> str:
    if kind == "task" and (name is None or name == ""):
        raise ValueError(
            "Unable to determine name for the task: give the decorator name=, "
            "or decorate a function (something with a __name__)"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid {kind} name {name!r}: expected a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Invalid {kind} name: longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise ValueError(f"Invalid {kind} name {name!r}: NUL characters cannot be stored")
    if name.startswith(RUN_PREFIX):
        raise ValueError(
            f"Invalid {kind} name {name!r}: names starting with {RUN_PREFIX!r} are reserved "
            "for extra runs (trigger_task, backfill_task)"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"Invalid {kind} name {name!r}: not valid Unicode (a lone surrogate?)"
        ) from None
    return name


def check_instance_name(name: object) -> str:
    """An instance name as every backend can store it; ``ValueError`` otherwise."""
    return _check_name("instance", name)


def _as_timedelta(option: str, value: object) -> datetime.timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_DURATION.total_seconds():
            raise ValueError(f"Invalid {option} {value!r}: at most {MAX_DURATION.days} days")
        value = datetime.timedelta(seconds=value)
    if not isinstance(value, datetime.timedelta):
        raise ValueError(f"Invalid {option} {value!r}: expected a timedelta")
    if value <= datetime.timedelta(0):
        raise ValueError(f"Invalid {option} {value!r}: must be positive")
    if value > MAX_DURATION:
        raise ValueError(f"Invalid {option} {value!r}: at most {MAX_DURATION.days} days")
    return value


def _as_enum(option: str, enum_type: type[ExecutionMode] | type[FailureMode], value: object) -> Any:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str) and value in enum_type.__members__:
        return enum_type[value]
    raise ValueError(f"Invalid {option} {value!r}: expected a {enum_type.__name__}")


def _as_retry(name: str, retry: object) -> Retry | None:
    """A :class:`Retry`, or its stored form (a mapping), or ``None``."""
    if retry is None or isinstance(retry, Retry):
        return retry
    if isinstance(retry, dict):
        try:
            return Retry.from_json(retry)
        except ValueError as error:
            raise ValueError(f"Task {name!r}: {error}") from None
    raise ValueError(f"Task {name!r}: retry must be a pyncette.Retry, got {retry!r}")


def _as_overlap(name: str, overlap: object, mode: ExecutionMode) -> Overlap | None:
    if overlap is None:
        return None
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(
            f"Task {name!r}: Invalid overlap {overlap!r}: expected one of "
            f"{', '.join(map(repr, OVERLAP_POLICIES))}"
        )
    if mode is ExecutionMode.AT_MOST_ONCE and overlap != "allow":
        raise ValueError(
            f"Task {name!r}: overlap={overlap!r} needs execution_mode=AT_LEAST_ONCE (an "
            "at-most-once run holds no lease while it runs, so its runs always overlap)"
        )
    return overlap  # type: ignore[return-value]


def _as_coalesce(name: str, coalesce: object, fast_forward: bool) -> Coalesce:
    if coalesce is None:
        return "latest" if fast_forward else "all"
    if coalesce not in COALESCE_POLICIES:
        raise ValueError(
            f"Task {name!r}: Invalid coalesce {coalesce!r}: expected one of "
            f"{', '.join(map(repr, COALESCE_POLICIES))}"
        )
    if fast_forward and coalesce != "latest":
        raise ValueError(
            f"Task {name!r}: fast_forward=True is coalesce='latest' and conflicts with "
            f"coalesce={coalesce!r}; give only one of them"
        )
    return coalesce  # type: ignore[return-value]


@functools.lru_cache(maxsize=256)
def _shortest_cron_gap(expression: str, zone: datetime.tzinfo | None) -> datetime.timedelta:
    """The shortest gap between consecutive runs among the first
    :data:`CRON_GAP_SAMPLES` runs of ``expression`` after 2000-01-01 (a cheap check:
    a schedule's shortest gap may come later; per-run clamping covers that)."""
    at = next_cron(expression, zone, _CRON_GAP_REFERENCE)
    shortest = MAX_DURATION
    for _ in range(CRON_GAP_SAMPLES):
        following = next_cron(expression, zone, at)
        shortest = min(shortest, following - at)
        at = following
    return shortest


def _jitter_units(key: str, units: int) -> int:
    """A number in ``[0, units)`` fixed by ``key``: the same in every process (BLAKE2b,
    not the per-process randomised ``hash()``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % units


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
        misfire_grace_time: datetime.timedelta | None = None,
        coalesce: Coalesce | None = None,
        max_jitter: datetime.timedelta | None = None,
        retry: Retry | None = None,
        overlap: Overlap | None = None,
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
        self._init_partitions(partition_count, partition_selector, enabled_partitions)
        self.schedule = schedule
        self.interval = _as_timedelta("interval", interval) if interval is not None else None
        if execute_at is not None and not isinstance(execute_at, datetime.datetime):
            raise ValueError(f"Task {name!r}: execute_at must be a datetime, got {execute_at!r}")
        self.execute_at = to_utc(execute_at) if execute_at is not None else None
        if self.execute_at is not None and self.execute_at >= LATEST:
            raise ValueError(
                f"Task {name!r}: execute_at {execute_at!r} is outside what every backend "
                f"stores exactly (before {LATEST:%Y})"
            )
        self.timezone = timezone
        self.execution_mode: ExecutionMode = _as_enum(
            "execution_mode", ExecutionMode, execution_mode
        )
        self.failure_mode: FailureMode = _as_enum("failure_mode", FailureMode, failure_mode)
        self.lease_duration = _as_timedelta("lease_duration", lease_duration)
        self.fast_forward = boolean("fast_forward", fast_forward)
        self.coalesce: Coalesce = _as_coalesce(name, coalesce, self.fast_forward)
        # coalesce="latest" is fast_forward=True under its other name: one behaviour
        self.fast_forward = self.coalesce == "latest"
        self.misfire_grace_time = (
            _as_timedelta("misfire_grace_time", misfire_grace_time)
            if misfire_grace_time is not None
            else None
        )
        self.max_jitter = (
            _as_timedelta("max_jitter", max_jitter) if max_jitter is not None else None
        )
        self.retry = _as_retry(name, retry)
        if self.retry is not None and self.execution_mode is ExecutionMode.AT_MOST_ONCE:
            raise ValueError(
                f"Task {name!r}: retry needs execution_mode=AT_LEAST_ONCE (an at-most-once "
                "run is committed before it starts, so a failure is final)"
            )
        self.overlap = _as_overlap(name, overlap, self.execution_mode)
        self.enabled = boolean("enabled", enabled)
        self.extra_args = extra_args

        # The checks run in Pyncette 1.x's order, so a definition with several problems
        # is reported the way 1.x reported it; each message carries 1.x's wording.
        if (
            self.failure_mode is not FailureMode.NONE
            and self.execution_mode is ExecutionMode.AT_MOST_ONCE
        ):
            raise ValueError(
                f"Task {name!r}: failure_mode is not applicable when execution_mode is "
                "AT_MOST_ONCE (it only applies to AT_LEAST_ONCE tasks)"
            )
        kinds = [kind for kind in _SCHEDULE_KINDS if getattr(self, kind) is not None]
        if len(kinds) > 1:
            raise ValueError(
                f"Task {name!r}: Exactly one of the following must be specified: schedule, "
                f"interval, execute_at (got {' and '.join(kinds)}; give only one of them)"
            )
        if not kinds and not dynamic:
            raise ValueError(
                f"Task {name!r}: Exactly one of the following must be specified: schedule, "
                "interval, execute_at (got none; one of schedule, interval or execute_at "
                "is required)"
            )
        if timezone is not None and schedule is None and not dynamic:
            raise _timezone_without_cron(name, timezone)
        if schedule is not None:
            validate_cron(schedule)
        if execute_at is not None and not (dynamic or parent_task):
            raise ValueError(
                f"Task {name!r}: execute_at is only supported for dynamic tasks "
                "(give it to schedule_task for one instance of a dynamic task)"
            )
        try:
            self._tzinfo = parse_timezone(timezone) if timezone is not None else None
        except ValueError as exc:
            raise ValueError(f"Task {name!r}: {exc}") from None
        try:
            self._args_json = json.dumps(extra_args, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(
                f"Task {name!r}: Extra parameters must be JSON serializable ({exc})"
            ) from None
        if len(self._args_json) > MAX_ARGUMENTS_BYTES:  # characters: a lower bound on bytes
            raise ValueError(
                f"Task {name!r}: arguments take {len(self._args_json)} characters as JSON; "
                f"at most {MAX_ARGUMENTS_BYTES} bytes are allowed"
            )
        if len(self._args_json.encode()) > MAX_ARGUMENTS_BYTES:
            raise ValueError(
                f"Task {name!r}: arguments take more than {MAX_ARGUMENTS_BYTES} bytes as JSON"
            )
        if self.max_jitter is not None:
            self._check_jitter(self.max_jitter)

    def _check_jitter(self, max_jitter: datetime.timedelta) -> None:
        """``max_jitter`` must be at least the jitter unit and shorter than the interval,
        or than the shortest gap between the first runs of the cron schedule."""
        if max_jitter < JITTER_UNIT:
            raise ValueError(
                f"Task {self.name!r}: max_jitter {max_jitter!r} is shorter than the "
                "jitter unit (1 ms)"
            )
        if self.interval is not None and max_jitter >= self.interval:
            raise ValueError(
                f"Task {self.name!r}: max_jitter ({max_jitter}) must be shorter than the "
                f"interval ({self.interval}), or jittered runs could reach the next one"
            )
        if self.schedule is not None:
            gap = _shortest_cron_gap(self.schedule, self._tzinfo)
            if max_jitter >= gap:
                raise ValueError(
                    f"Task {self.name!r}: max_jitter ({max_jitter}) must be shorter than "
                    f"the shortest gap between runs of {self.schedule!r} ({gap})"
                )

    def _init_partitions(
        self,
        partition_count: int | None,
        partition_selector: PartitionSelector | None,
        enabled_partitions: Iterable[int] | None,
    ) -> None:
        self.partition_count = partition_count
        self.partition_selector: PartitionSelector = (
            partition_selector or default_partition_selector
        )
        self.enabled_partitions: list[int] = []
        if partition_count is None:
            return
        if isinstance(partition_count, bool) or not isinstance(partition_count, int):
            raise ValueError(f"Task {self.name!r}: partition_count must be an integer")
        if partition_count < 1:
            raise ValueError(
                f"Task {self.name!r}: Partition count must be greater than or equal to 1 "
                f"(got partition_count={partition_count})"
            )
        if partition_count > MAX_PARTITIONS:
            raise ValueError(
                f"Task {self.name!r}: partition_count is at most {MAX_PARTITIONS} "
                f"(got {partition_count})"
            )
        longest_group = len(self.name) + 1 + len(str(partition_count - 1))
        if longest_group > MAX_NAME_LENGTH:
            raise ValueError(
                f"Task {self.name!r}: the name is too long for a partitioned task: its "
                f"partitions are stored as '<name>:<partition>', at most {MAX_NAME_LENGTH} "
                "characters"
            )
        enabled_list = (
            list(range(partition_count)) if enabled_partitions is None else list(enabled_partitions)
        )
        bad = [p for p in enabled_list if not isinstance(p, int) or not 0 <= p < partition_count]
        if bad:
            raise ValueError(
                f"Task {self.name!r}: enabled partitions {bad} outside 0..{partition_count - 1}"
            )
        self.enabled_partitions = sorted(set(enabled_list))

    # -- identity -------------------------------------------------------------------

    @property
    def tzinfo(self) -> datetime.tzinfo:
        """The timezone the schedule is read in (UTC when the task has none)."""
        return self._tzinfo or UTC

    @property
    def func(self) -> TaskFunc:
        """The decorated function."""
        return self._func

    @func.setter
    def func(self, value: TaskFunc) -> None:
        self._func = value
        self.is_async = is_async_callable(value)
        """Whether the function is a coroutine function (else it runs in a worker thread)."""

    @property
    def task_func(self) -> TaskFunc:
        """The decorated function (Pyncette 1.x's name for :attr:`func`)."""
        return self.func

    @task_func.setter
    def task_func(self, value: TaskFunc) -> None:
        self.func = value

    @property
    def args(self) -> dict[str, Any]:
        return self.extra_args

    @property
    def is_instance(self) -> bool:
        return self.parent_task is not None

    @property
    def template(self) -> Task:
        return self.parent_task or self

    @property
    def canonical_name(self) -> str:
        """A name unique among all tasks and instances, as Pyncette 1.x formed it.

        ``:`` in a name is doubled; an instance is ``<template>:<instance>``, and an
        instance of a partitioned task ``<template>:<partition>:<instance>``.
        """
        parent = self.parent_task
        if parent is None:
            return _escape(self.name)
        prefix = parent.canonical_name
        if parent.partition_count is not None:
            prefix = f"{prefix}:{parent.partition_for(self.name)}"
        return f"{prefix}:{_escape(self.name)}"

    def partition_for(self, instance_name: str) -> int:
        """The partition of this partitioned template that holds ``instance_name``."""
        if self.partition_count is None:
            raise ValueError(f"Task {self.name!r} is not partitioned")
        partition = self.partition_selector(self.partition_count, instance_name)
        if isinstance(partition, bool) or not isinstance(partition, int):
            partition = -1
        if not 0 <= partition < self.partition_count:
            raise ValueError(
                f"Partition selector of {self.name!r} returned {partition!r} for "
                f"{instance_name!r}; expected 0..{self.partition_count - 1}"
            )
        return partition

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
        return f"{self.name}:{self.partition_for(instance_name)}"

    # -- scheduling -----------------------------------------------------------------

    def initial_run(self, now: datetime.datetime) -> datetime.datetime:
        """When a newly registered task first runs (jittered, with ``max_jitter``)."""
        if self.execute_at is not None:
            return self._jittered(self.execute_at)
        if self.interval is None and self.schedule is None:
            raise ValueError(f"Task {self.name!r} has no schedule to run on")
        return self._jittered(self._next_nominal(now, now, skip_missed=False))

    def next_run(
        self,
        scheduled_at: datetime.datetime,
        now: datetime.datetime,
        *,
        claimed_at: datetime.datetime | None = None,
    ) -> datetime.datetime | None:
        """The run after the one scheduled at ``scheduled_at``; ``None`` for one-off tasks.

        ``now`` is when the run ended (or was skipped), ``claimed_at`` when it was
        claimed. With ``coalesce="all"`` (the default) missed runs are caught up one by
        one. With ``"latest"`` (``fast_forward=True``) the next run is the first one
        after ``now``, so every run that fell due before this one ended is dropped; with
        ``"earliest"`` it is the first one after ``claimed_at`` (``now`` if not given),
        so runs that fell due while this one executed are coalesced into the earliest of
        them in turn. Missed means a *nominal* run time (before jitter) at or before the
        reference time. With ``max_jitter`` the result is the next nominal run plus its
        jitter (see :meth:`jitter`).

        Then ``overlap`` applies to a next run that fell due while this one ran (after
        ``claimed_at``, at or before ``now``): ``"skip"`` drops it and every other run
        due by ``now``; ``"buffer_one"`` keeps only the last of them, which runs at once.
        """
        if self.interval is None and self.schedule is None:
            return None
        ended = now
        if self.coalesce == "earliest" and claimed_at is not None:
            now = claimed_at
        nominal = scheduled_at
        if self.interval is not None:
            nominal = scheduled_at - self._phase()
        following = self._next_nominal(nominal, now, skip_missed=self.coalesce != "all")
        nxt = self._jittered(following)
        if (
            self.overlap in ("skip", "buffer_one")
            and claimed_at is not None
            and claimed_at < nxt <= ended
        ):
            if self.overlap == "skip":
                return self._jittered(self._next_nominal(following, ended, skip_missed=True))
            return self._jittered(self._last_nominal(following, ended))
        return nxt

    def _last_nominal(
        self, nominal: datetime.datetime, end: datetime.datetime
    ) -> datetime.datetime:
        """The last nominal run at or before ``end``, from ``nominal`` (one of them)."""
        if self.interval is not None:
            return nominal + self.interval * math.floor((end - nominal) / self.interval)
        assert self.schedule is not None
        for _ in range(MAX_BUFFER_STEPS):
            following = next_cron(self.schedule, self._tzinfo, nominal)
            if following > end:
                break
            nominal = following
        return nominal

    def _next_nominal(
        self, nominal: datetime.datetime, now: datetime.datetime, *, skip_missed: bool
    ) -> datetime.datetime:
        if self.interval is not None:
            nxt = nominal + self.interval
            if skip_missed and nxt <= now:
                missed = math.floor((now - nominal) / self.interval)
                nxt = nominal + self.interval * (missed + 1)
            return nxt
        assert self.schedule is not None
        # a jittered cron run stays before the next nominal run (the offset is clamped
        # below the gap), so the first cron time after it is the next nominal run
        after = max(nominal, now) if skip_missed else nominal
        return next_cron(self.schedule, self._tzinfo, after)

    def jitter(self, nominal: datetime.datetime) -> datetime.timedelta:
        """The offset added to the run nominally at ``nominal``: zero without
        ``max_jitter``, otherwise whole milliseconds in ``[0, max_jitter)`` fixed by a
        BLAKE2b hash, the same in every process.

        A cron run (or a one-off run) hashes the canonical name (instance names
        included) with the nominal time, and the offset is clamped below the gap to the
        next cron time, so a jittered run never reaches the next run. An interval task
        has no fixed grid to recover a nominal time from, so its offset hashes the
        canonical name alone: a constant phase per task or instance, which keeps its
        runs exactly ``interval`` apart.
        """
        if self.max_jitter is None:
            return datetime.timedelta(0)
        if self.interval is not None:
            return self._phase()
        window = self.max_jitter
        nominal = to_utc(nominal)
        if self.schedule is not None:
            window = min(window, next_cron(self.schedule, self._tzinfo, nominal) - nominal)
        units = window // JITTER_UNIT
        if units <= 1:
            return datetime.timedelta(0)
        key = f"{self.canonical_name}\x00{nominal.isoformat()}"
        return JITTER_UNIT * _jitter_units(key, units)

    def _phase(self) -> datetime.timedelta:
        """The constant jitter of an interval task (zero without ``max_jitter``)."""
        if self.max_jitter is None:
            return datetime.timedelta(0)
        units = self.max_jitter // JITTER_UNIT
        return JITTER_UNIT * _jitter_units(f"{self.canonical_name}\x00interval", units)

    def _jittered(self, nominal: datetime.datetime) -> datetime.datetime:
        if self.max_jitter is None:
            return nominal
        return nominal + self.jitter(nominal)

    def runs_between(
        self,
        start: datetime.datetime,
        end: datetime.datetime,
        *,
        anchor: datetime.datetime | None,
        limit: int,
    ) -> list[datetime.datetime]:
        """The runs of this task's schedule at or after ``start`` and before ``end``, at
        their nominal times (no jitter), in UTC: the cron times, the interval's times on
        the grid through ``anchor`` (the stored next run; ``start`` if ``None``), or the
        ``execute_at`` of a one-off. ``ValueError`` if there are more than ``limit``."""
        start, end = to_utc(start), to_utc(end)
        runs: list[datetime.datetime] = []

        def add(at: datetime.datetime) -> None:
            if len(runs) == limit:
                raise ValueError(
                    f"{self} has more than {limit} runs from {start} to {end}; "
                    "backfill a shorter range at a time"
                )
            runs.append(at)

        if self.schedule is not None:
            at = next_cron(self.schedule, self._tzinfo, start - _MICROSECOND)
            while at < end:
                add(at)
                at = next_cron(self.schedule, self._tzinfo, at)
        elif self.interval is not None:
            base = to_utc(anchor) if anchor is not None else start
            at = base + self.interval * math.ceil((start - base) / self.interval)
            while at < end:
                add(at)
                at += self.interval
        elif self.execute_at is not None:
            if start <= self.execute_at < end:
                add(self.execute_at)
        else:
            raise ValueError(f"Task {self.name!r} has no schedule to backfill")
        return runs

    def get_next_execution(
        self, utc_now: datetime.datetime, last_execution: datetime.datetime | None
    ) -> datetime.datetime | None:
        """Pyncette 1.x's schedule step: the first run (``last_execution`` is ``None``) or
        the run after ``last_execution``; ``None`` once a one-off task has run, or for a
        template that has no schedule of its own. The result is in UTC.
        """
        if last_execution is None:
            if self.execute_at is None and self.interval is None and self.schedule is None:
                return None
            return self.initial_run(utc_now)
        return self.next_run(last_execution, utc_now)

    # -- dynamic instances ----------------------------------------------------------

    def instantiate(self, name: str, **kwargs: Any) -> Task:
        """A concrete instance of this dynamic task named ``name``; ``kwargs`` are what
        ``schedule_task`` takes (a schedule, options and task arguments)."""
        return self.make_instance(name, kwargs)

    def make_instance(self, instance_name: str, overrides: dict[str, Any]) -> Task:
        """A concrete instance of this dynamic template with ``overrides`` applied."""
        if not self.dynamic:
            raise ValueError(
                f"Cannot instantiate a non-dynamic task: {self.name!r} is not a dynamic task"
            )
        options: dict[str, Any] = {
            "schedule": self.schedule,
            "interval": self.interval,
            "execute_at": self.execute_at,
            "timezone": self.timezone,
            "execution_mode": self.execution_mode,
            "failure_mode": self.failure_mode,
            "lease_duration": self.lease_duration,
            "fast_forward": self.fast_forward,
            "misfire_grace_time": self.misfire_grace_time,
            "coalesce": self.coalesce,
            "max_jitter": self.max_jitter,
            "retry": self.retry,
            "overlap": self.overlap,
        }
        # either spelling given for the instance replaces both inherited ones
        if "coalesce" in overrides and "fast_forward" not in overrides:
            options["fast_forward"] = False
        elif "fast_forward" in overrides and "coalesce" not in overrides:
            options["coalesce"] = None
        args = dict(self.extra_args)
        if any(overrides.get(kind) is not None for kind in _SCHEDULE_KINDS):
            for kind in _SCHEDULE_KINDS:
                options[kind] = None
        for key, value in overrides.items():
            if key == "enabled":
                raise ValueError("enabled cannot be set on a dynamic task instance")
            if key in RESERVED_ARGUMENTS:
                raise ValueError(
                    f"Task {instance_name!r}: {key!r} is reserved and cannot be an argument"
                )
            if key in _OPTION_NAMES:
                options[key] = value
            else:
                args[key] = value
        if options["timezone"] is not None and options["schedule"] is None:
            raise _timezone_without_cron(instance_name, options["timezone"])
        instance = Task(name=instance_name, func=self.func, parent_task=self, **options, **args)
        instance._overrides = overrides
        return instance

    _overrides: dict[str, Any] | None = None

    def as_spec(self) -> dict[str, Any]:
        """This task in Pyncette 1.x's task-spec form: ``name``, ``schedule``, ``interval``
        (seconds), ``execute_at`` (ISO 8601), ``timezone`` and ``extra_args``.

        An instance that overrides ``execution_mode``, ``failure_mode``,
        ``lease_duration``, ``fast_forward``, ``misfire_grace_time``, ``coalesce``,
        ``max_jitter``, ``retry`` or ``overlap`` (which 1.x instances could not) carries
        those keys too, so that :meth:`instantiate_from_spec` rebuilds it exactly.
        """
        spec: dict[str, Any] = {
            "name": self.name,
            "schedule": self.schedule,
            "interval": self.interval.total_seconds() if self.interval is not None else None,
            "execute_at": self.execute_at.isoformat() if self.execute_at is not None else None,
            "timezone": self.timezone,
            "extra_args": dict(self.extra_args),
        }
        for option in _EXECUTION_OPTIONS:
            if option in (self._overrides or {}):
                value = getattr(self, option)
                if isinstance(value, datetime.timedelta):
                    value = value.total_seconds()
                elif isinstance(value, (ExecutionMode, FailureMode)):
                    value = value.name
                elif isinstance(value, Retry):
                    value = value.to_json()
                spec[option] = value
        return spec

    def instantiate_from_spec(self, task_spec: dict[str, Any]) -> Task:
        """The instance of this dynamic task that :meth:`as_spec` described."""
        interval = task_spec.get("interval")
        execute_at = task_spec.get("execute_at")
        options: dict[str, Any] = {
            "schedule": task_spec.get("schedule"),
            "interval": datetime.timedelta(seconds=interval) if interval is not None else None,
            "execute_at": (
                datetime.datetime.fromisoformat(execute_at) if execute_at is not None else None
            ),
            "timezone": task_spec.get("timezone"),
        }
        options.update({key: task_spec[key] for key in _EXECUTION_OPTIONS if key in task_spec})
        return self.instantiate(task_spec["name"], **options, **task_spec.get("extra_args", {}))

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
            elif isinstance(value, Retry):
                value = value.to_json()
            encoded[key] = value
        return json.dumps(encoded, sort_keys=True, allow_nan=False)

    def from_spec(self, instance_name: str, spec: str) -> Task:
        """Rebuild an instance of this template from its stored spec.

        Instances sharing a spec (the usual case for queues of one-off tasks) are parsed
        and validated once; later ones are shallow copies with their own name.
        """
        prototypes = self.__dict__.get("_prototypes")
        if prototypes is None:
            prototypes = self.__dict__["_prototypes"] = {}
        prototype = prototypes.get(spec)
        if prototype is None:
            prototype = self._parse_spec(instance_name, spec)
            if len(prototypes) >= _PROTOTYPE_CACHE_SIZE:
                prototypes.clear()
            prototypes[spec] = prototype
        instance: Task = object.__new__(prototype.__class__)
        attributes = prototype.__dict__.copy()  # twice as fast as updating an empty one
        if prototype.__class__ is Task:  # an ExtraRun keeps the name of the instance it runs
            attributes["name"] = instance_name
        instance.__dict__ = attributes
        return instance

    def _parse_spec(self, instance_name: str, spec: str) -> Task:
        raw = json.loads(spec)
        if isinstance(raw, dict) and "run_of" in raw:  # a row queued by trigger/backfill
            target = check_instance_name(raw["run_of"])
            return extra_run(self._parse_spec(target, raw.get("spec") or "{}"))
        overrides: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _DURATION_OPTIONS and isinstance(value, dict):
                value = datetime.timedelta(seconds=value["seconds"])
            elif key == "execute_at" and isinstance(value, dict):
                value = datetime.datetime.fromisoformat(value["at"])
            overrides[key] = value
        return self.make_instance(instance_name, overrides)

    # -- calling --------------------------------------------------------------------

    def __call__(self, context: Context) -> Awaitable[None]:
        return self.func(context)

    def __str__(self) -> str:
        return self.canonical_name

    def __repr__(self) -> str:
        kind = "instance" if self.parent_task else ("dynamic task" if self.dynamic else "task")
        return f"<{kind} {self.name!r}>"


class ExtraRun(Task):
    """One extra run of a task or instance, queued by ``trigger_task`` or
    ``backfill_task`` in a row of its own: the task as it is, with no run after it (the
    row is removed once it has run); its schedule is left to the task's own row."""

    def next_run(
        self,
        scheduled_at: datetime.datetime,
        now: datetime.datetime,
        *,
        claimed_at: datetime.datetime | None = None,
    ) -> datetime.datetime | None:
        return None


def extra_run(task: Task) -> ExtraRun:
    """``task`` (a static task or an instance) as an :class:`ExtraRun`."""
    run = object.__new__(ExtraRun)
    run.__dict__.update(task.__dict__)
    return run


def extra_run_name(kind: str, target: str, at: datetime.datetime) -> str:
    """The row name of an extra run of ``target`` due at ``at`` (``kind``: ``"b"`` for
    a backfill, ``"o"`` for an overlapping run): the same for the same run, so queuing
    it twice queues it once."""
    key = f"{target}\x00{to_epoch_us(at)}".encode()
    return f"{RUN_PREFIX}{kind}{hashlib.sha256(key).hexdigest()[:24]}"


def extra_run_spec(target: str, spec: str | None) -> str:
    """The stored spec of an extra run of ``target`` (whose own spec is ``spec``)."""
    return json.dumps({"run_of": target, "spec": spec}, sort_keys=True)


def extra_run_target(spec: str | None) -> str | None:
    """The name an extra run's spec runs; ``None`` if ``spec`` is not one."""
    try:
        raw = json.loads(spec or "")
    except ValueError:
        return None
    target = raw.get("run_of") if isinstance(raw, dict) else None
    return target if isinstance(target, str) else None


def _timezone_without_cron(name: str, timezone: object) -> ValueError:
    return ValueError(
        f"Task {name!r}: Timezone may only be specified when cron schedule is used "
        f"(timezone={timezone!r} was given without schedule=)"
    )


class PartitionedTask(Task):
    """A dynamic task whose instances are spread over ``partition_count`` repository
    groups by ``partition_selector`` (``@app.partitioned_task``); only the
    ``enabled_partitions`` are polled here, but instances go to every partition.
    """

    partition_count: int

    def __init__(
        self,
        *,
        partition_count: int,
        partition_selector: PartitionSelector | None = None,
        enabled_partitions: Iterable[int] | None = None,
        **options: Any,
    ) -> None:
        if not options.pop("dynamic", True):
            raise ValueError(f"Task {options.get('name')!r}: a partitioned task is dynamic")
        super().__init__(
            dynamic=True,
            partition_count=partition_count,
            partition_selector=partition_selector,
            enabled_partitions=enabled_partitions,
            **options,
        )

    def get_partitions(self) -> list[TaskPartition]:
        """One :class:`TaskPartition` per partition, polled or not."""
        return [TaskPartition(self, partition) for partition in range(self.partition_count)]


class TaskPartition(Task):
    """One partition of a :class:`PartitionedTask`: a dynamic task sharing its
    options, whose instances are those the selector assigns to ``partition_id``.

    It is enabled while its task is and ``partition_id`` is among the task's
    ``enabled_partitions``.
    """

    def __init__(self, partitioned_task: PartitionedTask, partition_id: int) -> None:
        # The task's options were validated when it was declared: share them as they are.
        self.__dict__.update(partitioned_task.__dict__)
        self.__dict__.pop("_prototypes", None)
        self.partitioned_task = partitioned_task
        self.partition_id = partition_id

    @property
    def enabled(self) -> bool:
        task = self.partitioned_task
        return task.enabled and self.partition_id in task.enabled_partitions

    @enabled.setter
    def enabled(self, value: bool) -> None:
        raise ValueError(
            "Use enabled_partitions to disable polling a partition: partition "
            f"{self.partition_id} of {self.name!r} follows its task's enabled_partitions"
        )

    @property
    def canonical_name(self) -> str:
        return f"{_escape(self.name)}:{self.partition_id}"

    def groups(self) -> list[str]:
        return [f"{self.name}:{self.partition_id}"]

    def all_groups(self) -> list[str]:
        return self.groups()

    def make_instance(self, instance_name: str, overrides: dict[str, Any]) -> Task:
        return self.partitioned_task.make_instance(instance_name, overrides)

    def __repr__(self) -> str:
        return f"<partition {self.partition_id} of {self.name!r}>"


_TaskPartition = TaskPartition  # Pyncette 1.x's name for it


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine: a coroutine function, a partial of one,
    or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - the bound method is what is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def make_task(**options: Any) -> Task:
    """The task a decorator declares: a :class:`PartitionedTask` when the options give a
    ``partition_count``, otherwise a :class:`Task`."""
    if options.get("partition_count") is not None:
        return PartitionedTask(**options)
    return Task(**options)


def unwrap(func: TaskFunc | SyncTaskFunc | Task) -> TaskFunc:
    """The function under a task, so that decorators can be stacked. (A plain ``def``
    function is kept as it is; the scheduler runs it in a worker thread.)"""
    if isinstance(func, Task):
        return func.func
    return func  # type: ignore[return-value]


__all__ = [
    "STATIC_GROUP",
    "UTC",
    "Decorator",
    "PartitionedTask",
    "Task",
    "TaskPartition",
    "default_partition_selector",
    "make_task",
    "unwrap",
]
