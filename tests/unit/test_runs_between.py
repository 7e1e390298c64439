"""Task.runs_between: the runs a backfill queues (pure schedule arithmetic)."""

from __future__ import annotations

import datetime

import pytest

from pyncette import Context, Pyncette
from pyncette.task import ExtraRun, extra_run, extra_run_spec, extra_run_target

S = datetime.timedelta(seconds=1)
H = datetime.timedelta(hours=1)
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


async def noop(context: Context) -> None: ...


def test_cron_runs_include_start_and_exclude_end() -> None:
    task = Pyncette().task(name="hourly", schedule="0 * * * *")(noop)
    assert task.runs_between(T0, T0 + 3 * H, anchor=None, limit=10) == [T0, T0 + H, T0 + 2 * H]
    assert task.runs_between(T0 + S, T0 + H, anchor=None, limit=10) == []


def test_cron_runs_follow_the_tasks_timezone() -> None:
    task = Pyncette().task(name="nine", schedule="0 9 * * *", timezone="Europe/Ljubljana")(noop)
    runs = task.runs_between(T0, T0 + datetime.timedelta(days=2), anchor=None, limit=10)
    assert runs == [T0 + 8 * H, T0 + 32 * H]  # 09:00 CET is 08:00 UTC
    assert all(run.tzinfo == datetime.UTC for run in runs)


def test_interval_runs_sit_on_the_grid_through_the_anchor() -> None:
    task = Pyncette().task(name="every7", interval=7 * S)(noop)
    anchor = T0 + 100 * S
    assert task.runs_between(T0, T0 + 20 * S, anchor=anchor, limit=10) == [
        T0 + 2 * S,
        T0 + 9 * S,
        T0 + 16 * S,
    ]
    assert task.runs_between(T0, T0 + 15 * S, anchor=None, limit=10) == [
        T0,
        T0 + 7 * S,
        T0 + 14 * S,
    ]


def test_one_offs_and_the_limit() -> None:
    template = Pyncette().dynamic_task(name="jobs")(noop)
    once = template.instantiate("x", execute_at=T0 + 5 * S)
    assert once.runs_between(T0, T0 + 10 * S, anchor=None, limit=1) == [T0 + 5 * S]
    assert once.runs_between(T0 + 6 * S, T0 + 10 * S, anchor=None, limit=1) == []
    often = Pyncette().task(name="often", interval=S)(noop)
    with pytest.raises(ValueError, match="more than 3 runs"):
        often.runs_between(T0, T0 + 4 * S, anchor=None, limit=3)
    with pytest.raises(ValueError, match="no schedule to backfill"):
        template.runs_between(T0, T0 + S, anchor=None, limit=3)


def test_an_extra_run_is_the_task_without_a_next_run() -> None:
    template = Pyncette().dynamic_task(name="jobs", interval=S)(noop)
    instance = template.instantiate("a", who="ann")
    spec = extra_run_spec("a", instance.spec())
    assert extra_run_target(spec) == "a"
    assert extra_run_target(instance.spec()) is None and extra_run_target(None) is None
    run = template.from_spec("__run__:t1", spec)
    assert isinstance(run, ExtraRun) and run.name == "a" and run.args == {"who": "ann"}
    assert run.next_run(T0, T0) is None and instance.next_run(T0, T0) == T0 + S
    assert extra_run(instance).interval == S  # the task as it is, for the task function
