"""The retry option: Retry's validation and back-off, the task option's checks, and the
stored form of an instance's retry."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from pyncette import Context, ExecutionMode, Pyncette, Retry

S = datetime.timedelta(seconds=1)


async def noop(context: Context) -> None: ...


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attempts": 0}, "attempts must be between 1 and 100, got 0"),
        ({"attempts": 101}, "attempts must be between 1 and 100"),
        ({"attempts": True}, "attempts must be an integer"),
        ({"attempts": 2.5}, "attempts must be an integer"),
        ({"backoff": -S}, "backoff must be a timedelta >= 0"),
        ({"backoff": 5}, "backoff must be a timedelta"),
        ({"backoff": 10 * S, "max_backoff": 5 * S}, "max_backoff .* is shorter than backoff"),
        ({"factor": 0.5}, "factor must be a number >= 1"),
        ({"factor": float("nan")}, "factor must be a number >= 1"),
        ({"factor": float("inf")}, "factor must be finite"),
        ({"factor": "2"}, "factor must be a number"),
    ],
)
def test_bad_retries_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retry(**fields)


def test_backoff_grows_by_the_factor_up_to_the_cap() -> None:
    policy = Retry(attempts=10, backoff=S, max_backoff=10 * S, factor=3)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [S, 3 * S, 9 * S, 10 * S]
    assert Retry(backoff=S, factor=1e300).delay(5) == Retry().max_backoff  # no overflow
    assert Retry(backoff=datetime.timedelta(0)).delay(3) == datetime.timedelta(0)


def test_the_stored_form_round_trips_and_rejects_strangers() -> None:
    policy = Retry(attempts=4, backoff=1.5 * S, max_backoff=20 * S, factor=1.5)
    assert Retry.from_json(json.loads(json.dumps(policy.to_json()))) == policy
    with pytest.raises(ValueError, match="Unknown Retry field"):
        Retry.from_json({"attempts": 2, "jitter": 1})
    with pytest.raises(ValueError, match="Invalid Retry"):
        Retry.from_json({"backoff": "soon"})


def test_the_task_option_is_checked_when_declared() -> None:
    app = Pyncette()
    with pytest.raises(ValueError, match=r"retry must be a pyncette\.Retry, got 3"):
        app.task(name="a", interval=S, retry=3)(noop)
    with pytest.raises(ValueError, match="retry needs execution_mode=AT_LEAST_ONCE"):
        app.task(name="b", interval=S, retry=Retry(), execution_mode=ExecutionMode.AT_MOST_ONCE)(
            noop
        )
    task = app.task(name="c", interval=S, retry=Retry(attempts=2))(noop)
    assert task.retry == Retry(attempts=2)
    assert app.task(name="d", interval=S)(noop).retry is None


def test_instances_inherit_override_and_store_their_retry() -> None:
    app = Pyncette()
    template = app.dynamic_task(name="jobs", retry=Retry(attempts=2))(noop)
    inherited = template.instantiate("a", interval=S)
    assert inherited.retry == Retry(attempts=2)
    own = template.instantiate("b", interval=S, retry=Retry(attempts=5, backoff=2 * S))
    rebuilt = template.from_spec("b", own.spec())
    assert rebuilt.retry == Retry(attempts=5, backoff=2 * S)
    assert template.instantiate_from_spec(own.as_spec()).retry == own.retry
    none = template.instantiate("c", interval=S, retry=None)
    assert template.from_spec("c", none.spec()).retry is None
    with pytest.raises(ValueError, match="Unknown Retry field"):
        template.from_spec("d", json.dumps({"interval": {"seconds": 1}, "retry": {"x": 1}}))
    with pytest.raises(ValueError, match="retry needs execution_mode=AT_LEAST_ONCE"):
        template.instantiate("e", interval=S, execution_mode=ExecutionMode.AT_MOST_ONCE)
