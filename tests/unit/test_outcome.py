"""The stored form of a run's outcome (``pyncette.outcome``)."""

from __future__ import annotations

import datetime
import json

import pytest

from pyncette.outcome import MAX_ERROR_CHARS, RunRecord, RunStatus, decode, encode, error_text

T = datetime.datetime(2030, 1, 1, 0, 0, 1, 123456, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)


@pytest.mark.parametrize("status", list(RunStatus))
@pytest.mark.parametrize(
    ("duration", "instance", "error"),
    [
        (2500 * datetime.timedelta(milliseconds=1), "web-1:4711", None),
        (None, None, None),
        (datetime.timedelta(0), 'odd "host"\\:1', 'Boom: "quoted" é ✓\n\ttab \x00 nul'),
    ],
)
def test_encode_writes_json_that_decodes_to_the_same_run(
    status: RunStatus,
    duration: datetime.timedelta | None,
    instance: str | None,
    error: str | None,
) -> None:
    text = encode(
        status,
        scheduled_at=T,
        started_at=T + S,
        duration=duration,
        attempt=3,
        instance=instance,
        error=error,
    )
    fields = json.loads(text)
    assert fields["s"] == status.value and fields["a"] == 3
    assert decode(text) == RunRecord(status, T, T + S, duration, 3, instance, error)


def test_times_before_the_epoch_and_far_ahead_survive() -> None:
    early = datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    late = datetime.datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    text = encode(
        RunStatus.SKIPPED,
        scheduled_at=early,
        started_at=late,
        duration=None,
        attempt=1,
        instance=None,
    )
    run = decode(text)
    assert run is not None and (run.scheduled_at, run.started_at) == (early, late)


def test_finished_at_is_start_plus_duration() -> None:
    run = RunRecord(RunStatus.SUCCEEDED, T, T + S, 2 * S, 1, None)
    assert run.finished_at == T + 3 * S
    assert RunRecord(RunStatus.STARTED, T, T, None, 1, None).finished_at is None


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "not json",
        "[]",
        '{"s":"exploded","sch":0,"at":0,"a":1}',
        '{"s":"failed","at":0,"a":1}',
        '{"s":"failed","sch":"yesterday","at":0,"a":1}',
        '{"s":"failed","sch":0,"at":0,"a":1,"e":42}',
    ],
)
def test_text_that_is_not_a_run_reads_as_none(text: str | None) -> None:
    assert decode(text) is None


def test_long_errors_are_cut() -> None:
    text = error_text(ValueError("x" * 5000))
    assert len(text) == MAX_ERROR_CHARS and text.startswith("ValueError: xxx")
    assert text.endswith("…")
    assert error_text(KeyError("k")) == "KeyError: 'k'"
