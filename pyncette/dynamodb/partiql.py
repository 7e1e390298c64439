"""Claims and commits as PartiQL statements, up to 25 in one ``BatchExecuteStatement``.

Each statement in a batch is billed and applied like the single-item write it stands
for, and succeeds or fails on its own: a refused condition comes back as that
statement's ``ConditionalCheckFailed``, which is the per-row lease check the claims and
commits need. So a claim of 100 rows costs four requests instead of 100, at the same
write units.

Not every server runs them correctly: moto 5.2.5 reports a refused condition as a
success, and an IAM policy may allow ``PutItem`` but not ``PartiQLUpdate``. Whether a
repository uses them is decided once, at start-up, by :func:`probe`: it sends every
statement shape used here against a key that cannot exist, and only if each one comes
back refused are the batches used; otherwise the repository writes one item per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bex

from pyncette.clock import real_sleep
from pyncette.dynamodb.client import Caller, gather
from pyncette.dynamodb.items import (
    DUE_AT,
    LOCKED_BY,
    LOCKED_UNTIL,
    OUTCOME,
    PARTITION_ID,
    SCHEDULED_AT,
    TASK_ID,
    VERSION,
    Item,
)
from pyncette.errors import BackendUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

BATCH_SIZE = 25
"""Statements per ``BatchExecuteStatement`` request: DynamoDB's limit."""

REFUSED = "ConditionalCheckFailed"

RESEND = frozenset(
    {
        "ProvisionedThroughputExceeded",
        "ThrottlingError",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflict",
    }
)
"""Statement error codes of writes DynamoDB did not apply and that may be sent again."""

PROBE_PARTITION = ":pyncette-probe"
"""A partition id no row has: rows' ids start with the partition prefix, which cannot
be empty."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a batch, and the item it writes (a batch may not write an item
    twice)."""

    key: tuple[str, str]
    request: dict[str, Any]


def _name(attribute: str) -> str:
    return f'"{attribute}"'


class Statements:
    """The statements of claims and commits on ``table``, and sending them in batches."""

    def __init__(self, client: DynamoDBClient, caller: Caller, table: str) -> None:
        if '"' in table:
            raise ValueError(f"table name {table!r} cannot be quoted in PartiQL")
        self.client = client
        self.caller = caller
        # Only the table name (quoted; checked above, and by DynamoDBSettings to
        # letters, digits, '_', '-', '.') is spliced in; every value is a parameter.
        held = f"WHERE {_name(PARTITION_ID)}=? AND {_name(TASK_ID)}=? AND {_name(LOCKED_BY)}=?"
        target = f'"{table}"'
        self._lock = (
            f"UPDATE {target} SET {_name(LOCKED_BY)}=? SET {_name(LOCKED_UNTIL)}=? "  # noqa: S608
            f"SET {_name(DUE_AT)}=? SET {_name(VERSION)}=? "
            f"WHERE {_name(PARTITION_ID)}=? AND {_name(TASK_ID)}=? AND {_name(VERSION)}=?"
        )
        self._delete = f"DELETE FROM {target} {held}"  # noqa: S608
        reschedule = (
            f"UPDATE {target} SET {_name(SCHEDULED_AT)}=? SET {_name(DUE_AT)}=? "  # noqa: S608
            f"SET {_name(VERSION)}={_name(VERSION)}+?"
        )
        release = f"REMOVE {_name(LOCKED_BY)} REMOVE {_name(LOCKED_UNTIL)} {held}"
        self._reschedule = f"{reschedule} {release}"
        self._reschedule_outcome = f"{reschedule} SET {_name(OUTCOME)}=? {release}"

    # -- the statements -----------------------------------------------------------------

    def lock(
        self, partition_id: str, name: str, version: int, lease: str, until: str, due: str
    ) -> Statement:
        """Take the lease on a row still at ``version``."""
        return Statement(
            (partition_id, name),
            {
                "Statement": self._lock,
                "Parameters": [
                    {"S": lease},
                    {"S": until},
                    {"S": due},
                    {"N": str(version + 1)},
                    {"S": partition_id},
                    {"S": name},
                    {"N": str(version)},
                ],
            },
        )

    def delete(self, partition_id: str, name: str, lease: str) -> Statement:
        """Delete a row ``lease`` holds."""
        return Statement(
            (partition_id, name),
            {
                "Statement": self._delete,
                "Parameters": [{"S": partition_id}, {"S": name}, {"S": lease}],
            },
        )

    def reschedule(
        self,
        partition_id: str,
        name: str,
        lease: str,
        scheduled_at: str,
        due: str,
        outcome: str | None,
    ) -> Statement:
        """Release a row ``lease`` holds, due next at ``scheduled_at``, storing
        ``outcome`` when there is one."""
        parameters: list[Item] = [{"S": scheduled_at}, {"S": due}, {"N": "1"}]
        statement = self._reschedule
        if outcome is not None:
            statement = self._reschedule_outcome
            parameters.append({"S": outcome})
        parameters += [{"S": partition_id}, {"S": name}, {"S": lease}]
        return Statement((partition_id, name), {"Statement": statement, "Parameters": parameters})

    # -- sending ------------------------------------------------------------------------

    async def apply(self, statements: Sequence[Statement], *, resend: bool = True) -> list[bool]:
        """Send ``statements``, :data:`BATCH_SIZE` to a request and the requests
        concurrently; for each, whether it was applied (``False``: its condition refused
        it). Statements that were throttled or hit a transient error are sent again with
        back-off; without ``resend`` (a claim, which simply leaves such a row for later)
        they count as refused. Any other error is raised once every request is done."""
        applied: list[bool] = [False] * len(statements)
        pending = list(range(len(statements)))
        attempt = 0
        while True:
            attempt += 1
            codes = await self._send([statements[i] for i in pending])
            again: list[int] = []
            for index, code in zip(pending, codes, strict=True):
                if code is None:
                    applied[index] = True
                elif code in RESEND:
                    again.append(index)
                elif code != REFUSED:
                    raise BackendUnavailableError(
                        f"DynamoDB {self.caller.where}: a batched write failed with {code}"
                    )
            if not again or not resend:
                return applied
            if attempt >= self.caller.attempts:
                raise BackendUnavailableError(
                    f"DynamoDB {self.caller.where}: {len(again)} batched writes still "
                    f"throttled after {attempt} attempts"
                )
            logger.debug(
                "DynamoDB %s: %d batched writes throttled; retry %d",
                self.caller.where,
                len(again),
                attempt,
            )
            await real_sleep(self.caller.backoff.delay(attempt))
            pending = again

    async def _send(
        self, statements: Sequence[Statement], caller: Caller | None = None
    ) -> list[str | None]:
        """Each statement's error code (``None`` for applied), in order."""
        call = caller or self.caller
        codes: list[str | None] = [None] * len(statements)

        async def send(chunk: list[int]) -> None:
            requests = [statements[i].request for i in chunk]
            response = await call(
                lambda: self.client.batch_execute_statement(
                    Statements=requests  # type: ignore[arg-type]
                )
            )
            answers = response.get("Responses", [])
            if len(answers) != len(chunk):
                raise BackendUnavailableError(
                    f"DynamoDB {self.caller.where}: {len(answers)} answers to "
                    f"{len(chunk)} batched statements"
                )
            for index, answer in zip(chunk, answers, strict=True):
                if "Error" in answer:
                    codes[index] = answer["Error"].get("Code", "")

        for wave in _waves([statement.key for statement in statements]):
            await gather([send(chunk) for chunk in wave])
        return codes


def _waves(keys: Sequence[tuple[str, str]]) -> list[list[list[int]]]:
    """The positions of ``keys`` as waves of requests of at most :data:`BATCH_SIZE`:
    the n-th statement on an item goes in wave n, as DynamoDB refuses a request that
    writes one item twice; waves are sent one after another, so writes to one item keep
    their order, and the requests of a wave together."""
    waves: list[list[int]] = []
    seen: dict[tuple[str, str], int] = {}
    for index, key in enumerate(keys):
        wave = seen.get(key, 0)
        seen[key] = wave + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(index)
    return [
        [positions[start : start + BATCH_SIZE] for start in range(0, len(positions), BATCH_SIZE)]
        for positions in waves
    ]


async def probe(statements: Statements) -> bool:
    """Whether the server runs :class:`Statements` as DynamoDB does: each shape, sent in
    one batch against a key that cannot exist, must come back refused by its condition.
    Writes nothing on a server that does (and nothing that any row could be on one that
    does not). Sent once, without retries: a server that cannot parse PartiQL may answer
    with a server error (moto does), and retrying that only delays the start."""
    version = 1
    lease, stamp = "probe", "0001-01-01T00:00:00.000000Z"
    shapes = [
        statements.lock(PROBE_PARTITION, "lock", version, lease, stamp, stamp),
        statements.delete(PROBE_PARTITION, "delete", lease),
        statements.reschedule(PROBE_PARTITION, "reschedule", lease, stamp, stamp, None),
        statements.reschedule(PROBE_PARTITION, "outcome", lease, stamp, stamp, "probe"),
    ]
    try:
        once = Caller(statements.caller.where, statements.caller.limiter, attempts=1)
        codes = await statements._send(shapes, once)
    except (bex.ClientError, BackendUnavailableError) as exc:
        logger.info(
            "DynamoDB %s: PartiQL batches unavailable (%s); writing one item per request",
            statements.caller.where,
            exc,
        )
        return False
    if all(code == REFUSED for code in codes):
        return True
    logger.info(
        "DynamoDB %s: the server answered PartiQL condition checks with %s instead of "
        "%s; writing one item per request",
        statements.caller.where,
        sorted({code or "success" for code in codes}),
        REFUSED,
    )
    return False
