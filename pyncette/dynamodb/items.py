"""How a row is laid out in a DynamoDB item.

* ``partition_id`` (hash key): ``<prefix>:<group>``;
* ``task_id`` (range key): the row name;
* ``ready_at`` (range key of the ``ready_at`` local secondary index; the names the
  user's table schema fixes): the row's ``due_at``, the time it becomes claimable
  (``locked_until`` when locked, else ``scheduled_at``), as a fixed-width UTC timestamp,
  then ``#`` and the row name, so the index is ordered by time and ties are broken by
  name. In code this is ``due_at`` as in every backend (:data:`DUE_AT` is the attribute's
  name, :func:`due_key` its value);
* ``spec`` (absent for ``None``), ``scheduled_at``, ``locked_until`` (timestamps like
  the above), ``lease_duration`` (a number of seconds), ``locked_by`` and ``version``,
  a number every write increments, which claims are conditioned on;
* ``outcome``: the last run's outcome text (absent until a commit or unlock stores one);
* ``run``: the number of the row's newest run history entry (absent until one is
  written; see :mod:`.history`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pyncette import codec
from pyncette.model import ContinuationToken, Lease
from pyncette.repository import Registration, StoredRow
from pyncette.timeutil import MICROSECOND, duration_us

PARTITION_ID = "partition_id"
TASK_ID = "task_id"
DUE_AT = "ready_at"
"""The attribute holding :func:`due_key`, and the name of the index on it."""
INDEX_NAME = DUE_AT
SPEC = "spec"
SCHEDULED_AT = "scheduled_at"
LEASE_DURATION = "lease_duration"
LOCKED_BY = "locked_by"
LOCKED_UNTIL = "locked_until"
VERSION = "version"
OUTCOME = "outcome"
RUN = "run"

Item = dict[str, Any]
"""An item in the low-level client's shape: ``{"name": {"S": "value"}, ...}``."""

UTC = datetime.UTC
_MAX_SORT_KEY_BYTES = 1024
_TIMESTAMP_WIDTH = len("2030-01-01T00:00:00.000000Z")
_DUE_KEY_NAME_BYTES = _MAX_SORT_KEY_BYTES - _TIMESTAMP_WIDTH - 1


def partition(prefix: str, group: str) -> str:
    return f"{prefix}:{group}"


def timestamp(at: datetime.datetime) -> str:
    """Fixed-width UTC text (years 0001-9999) whose string order is time order."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}; pyncette passes aware UTC datetimes")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)  # "Z" parses as UTC


def due_key(due_at: datetime.datetime, name: str) -> str:
    """The index key of a row due at ``due_at``; long names are cut to keep it within
    DynamoDB's 1024-byte limit (the index does not need unique keys, the name only orders
    equal times)."""
    encoded = name.encode()
    if len(encoded) > _DUE_KEY_NAME_BYTES:
        name = encoded[:_DUE_KEY_NAME_BYTES].decode(errors="ignore")
    return f"{timestamp(due_at)}#{name}"


def due_bound(now: datetime.datetime) -> str:
    """Index keys below this belong to rows claimable at ``now``."""
    return timestamp(now + MICROSECOND)


def seconds(duration: datetime.timedelta) -> str:
    """Exact decimal seconds: ``"60"``, ``"1.5"``, ``"0.000001"``."""
    micros = duration_us(duration)
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 10**6)
    return f"{sign}{whole}" if not fraction else f"{sign}{whole}.{fraction:06d}".rstrip("0")


def parse_seconds(text: str) -> datetime.timedelta:
    return datetime.timedelta(microseconds=int(Decimal(text).scaleb(6)))


@dataclass(slots=True)
class Row(StoredRow):
    """A decoded item."""

    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    lease_duration: datetime.timedelta
    locked_by: Lease | None = None
    locked_until: datetime.datetime | None = None
    version: int = 0
    outcome: str | None = None
    run: int | None = None

    @classmethod
    def new(cls, registration: Registration) -> Row:
        return cls(
            registration.name,
            registration.spec,
            registration.scheduled_at,
            registration.lease_duration,
        )

    @staticmethod
    def is_row(item: Item) -> bool:
        """Whether pyncette wrote ``item``: not, say, Pyncette 1.x under the same
        partition prefix, whose items have no ``scheduled_at`` or ``lease_duration``."""
        return SCHEDULED_AT in item and LEASE_DURATION in item

    @classmethod
    def from_item(cls, item: Item) -> Row:
        spec = item.get(SPEC)
        locked_by = item.get(LOCKED_BY)
        locked_until = item.get(LOCKED_UNTIL)
        version = item.get(VERSION)
        outcome = item.get(OUTCOME)
        run = item.get(RUN)
        return cls(
            name=item[TASK_ID]["S"],
            spec=spec["S"] if spec is not None else None,
            scheduled_at=parse_timestamp(item[SCHEDULED_AT]["S"]),
            lease_duration=parse_seconds(item[LEASE_DURATION]["N"]),
            locked_by=Lease(locked_by["S"]) if locked_by is not None else None,
            locked_until=parse_timestamp(locked_until["S"]) if locked_until is not None else None,
            version=int(version["N"]) if version is not None else 0,
            outcome=outcome["S"] if outcome is not None else None,
            run=int(run["N"]) if run is not None else None,
        )

    def to_item(self, partition_id: str) -> Item:
        item: Item = {
            PARTITION_ID: {"S": partition_id},
            TASK_ID: {"S": self.name},
            DUE_AT: {"S": due_key(self.due_at, self.name)},
            SCHEDULED_AT: {"S": timestamp(self.scheduled_at)},
            LEASE_DURATION: {"N": seconds(self.lease_duration)},
            VERSION: {"N": str(self.version)},
        }
        if self.spec is not None:
            item[SPEC] = {"S": self.spec}
        if self.locked_by is not None:
            item[LOCKED_BY] = {"S": self.locked_by}
        if self.locked_until is not None:
            item[LOCKED_UNTIL] = {"S": timestamp(self.locked_until)}
        if self.outcome is not None:
            item[OUTCOME] = {"S": self.outcome}
        if self.run is not None:
            item[RUN] = {"N": str(self.run)}
        return item


def key(partition_id: str, name: str) -> Item:
    return {PARTITION_ID: {"S": partition_id}, TASK_ID: {"S": name}}


def index_key(partition_id: str, item: Item) -> Item:
    """The position of ``item`` in the due-time index, for ``ExclusiveStartKey``."""
    return {**key(partition_id, item[TASK_ID]["S"]), DUE_AT: item[DUE_AT]}


def encode_list_token(name: str) -> ContinuationToken:
    """The ``LastEvaluatedKey`` of a listing (its range key; the group supplies the
    rest) as a :mod:`pyncette.codec` token."""
    return codec.encode_token({TASK_ID: name})


def decode_list_token(token: ContinuationToken) -> str:
    """The row name in a token from :func:`encode_list_token`; ``ValueError`` for
    anything else, including a well-formed token that does not hold a row name."""
    value = codec.decode_token(token)
    name = value.get(TASK_ID) if isinstance(value, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid continuation token {token!r}")
    return name
