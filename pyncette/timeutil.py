"""Times as integers: how the SQL and Redis backends store them.

An instant is stored as integer microseconds since the Unix epoch, which is UTC on every
server and in every session, keeps all of a ``datetime``'s precision and compares as an
integer. What :func:`to_epoch_us` stores, :func:`from_epoch_us` reads back exactly.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)


def to_epoch_us(moment: datetime.datetime) -> int:
    """Microseconds from the epoch to the aware datetime ``moment`` (any time zone).
    A naive datetime is a ``TypeError``: pyncette passes only aware ones."""
    return (moment - EPOCH) // MICROSECOND


def from_epoch_us(micros: int) -> datetime.datetime:
    """The aware UTC datetime ``micros`` microseconds after the epoch."""
    return EPOCH + datetime.timedelta(microseconds=micros)


def duration_us(duration: datetime.timedelta) -> int:
    """``duration`` in whole microseconds (all the precision a ``timedelta`` has)."""
    return duration // MICROSECOND


def batch_instants() -> Callable[[int], datetime.datetime]:
    """:func:`from_epoch_us` remembering what it converted: for the rows of one claimed
    batch, which mostly share their scheduled time and lease expiry."""
    seen: dict[int, datetime.datetime] = {}

    def convert(micros: int) -> datetime.datetime:
        moment = seen.get(micros)
        if moment is None:
            moment = seen[micros] = from_epoch_us(micros)
        return moment

    return convert
