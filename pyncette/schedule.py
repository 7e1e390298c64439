"""Next-run computation for cron and interval schedules, DST-correct."""

from __future__ import annotations

import datetime
import functools
import zoneinfo

from croniter import CroniterBadCronError, croniter
from dateutil import tz

UTC = datetime.UTC


@functools.lru_cache(maxsize=256)
def parse_timezone(name: str) -> datetime.tzinfo:
    """Resolve a timezone: anything ``dateutil.tz.gettz`` accepts; ``ValueError`` if unknown.

    IANA names are served by :mod:`zoneinfo`, whose transitions are exact (dateutil
    misplaces the autumn change of zones with negative DST such as Europe/Dublin);
    other forms (``UTC+12``, POSIX TZ strings) by dateutil.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Invalid timezone specifier {name!r}: expected a timezone name such as "
            "'Europe/Dublin' or 'UTC+12'"
        )
    try:
        zone = tz.gettz(name)
    except Exception as exc:  # e.g. a path to a file that is not a zone file
        raise ValueError(
            f"Invalid timezone specifier {name!r}: dateutil.tz.gettz cannot read it ({exc})"
        ) from None
    if zone is None:
        raise ValueError(
            f"Invalid timezone specifier {name!r}. Unknown timezone: "
            "dateutil.tz.gettz does not know it"
        )
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zone


def validate_cron(expression: str) -> None:
    """Accept 5 fields, or 6 with seconds last (as croniter reads them).

    Anything else raises croniter's ``CroniterBadCronError``, which is a ``ValueError``
    (Pyncette 1.x let croniter's own error through, and its users catch that).
    """
    if not isinstance(expression, str):
        raise CroniterBadCronError(f"Invalid cron schedule {expression!r}: expected a string")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise CroniterBadCronError(
            f"Invalid cron schedule {expression!r}: expected 5 fields, or 6 with seconds last, "
            f"got {len(fields)}"
        )
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter raises assorted errors for malformed fields
        valid = False
    if not valid:
        raise CroniterBadCronError(f"Invalid cron schedule {expression!r}")
    try:
        croniter(expression, datetime.datetime(2000, 1, 1)).get_next(datetime.datetime)
    except Exception:  # croniter's CroniterBadDateError: a date that never comes
        raise CroniterBadCronError(
            f"Invalid cron schedule {expression!r}: it never matches a date"
        ) from None


@functools.lru_cache(maxsize=1024)
def _cron_iterator_fields(expression: str) -> str:
    validate_cron(expression)
    return expression


def next_cron(
    expression: str, zone: datetime.tzinfo | None, after: datetime.datetime
) -> datetime.datetime:
    """The first time strictly after ``after`` (aware) that matches ``expression``.

    The expression is matched against wall-clock time in ``zone`` (UTC when ``None``).
    A wall-clock time skipped by a DST change runs as far after the change as it was
    after the gap's start (02:30 in a 02:00-03:00 gap runs at 03:30); a wall-clock time
    that occurs twice runs once, at its first occurrence (``fold=0``, PEP 495).
    """
    expression = _cron_iterator_fields(expression)
    zone = zone or UTC
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None, fold=0)
    it = croniter(expression, wall, ret_type=datetime.datetime)
    while True:
        candidate: datetime.datetime = it.get_next(datetime.datetime)
        result = candidate.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if result > after:
            return result


def to_utc(value: datetime.datetime) -> datetime.datetime:
    """Aware datetimes are converted to UTC; naive ones are read as the machine's local time."""
    return value.astimezone(UTC)
