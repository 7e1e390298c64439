"""The append-only log each chaos process keeps, and reading it back.

One JSON object per line. Every record is written with a single ``write(2)`` on an
``O_APPEND`` descriptor *before* the process goes on, so a SIGKILL can never lose a
record that the process acted on (the kernel owns the bytes once ``write`` returns). A
background thread ``fdatasync``\\ s the file every :data:`SYNC_EVERY` seconds and on
close, so the log also survives a machine crash up to that lag; syncing every record
inline would cost ~0.3 ms of event-loop time per record on this VM's disk.

Record kinds (``e``) and their fields; times ``t*`` are ``time.time()`` floats,
scheduled times and lease expiries are integer microseconds since the epoch:

* ``boot`` / ``exit``: ``slot``, ``t``;  ``ready``: the first claim returned.
* ``start`` / ``end``: one execution -- ``task`` (template), ``inst`` (instance name,
  or the task name for static tasks), ``sched``, ``lease`` (``None`` at-most-once),
  ``mode`` (``alo``/``amo``), ``fm`` (failure mode), ``t``; ``end`` adds ``ok``.
* ``claim_sent``: ``s`` (sequence), ``g`` (group), ``lease``, ``now``, ``t0``; then one
  answer: ``claim`` (the same fields, ``t1``, and ``rows``: ``[name, sched,
  locked_until]``), ``claim_none`` (``s``, ``t1``: nothing claimed) or ``claim_err``
  (the same fields, ``t1``, ``err``). A ``claim_sent`` without an answer was in flight
  when its process died.
* ``commit``: ``s`` (sequence), ``g``, ``t0``, ``items``: ``[name, lease, next_at]``;
  then ``committed`` (``s``, ``t1``, ``lost``) or ``commit_err`` (``s``, ``t1``, ``err``).
* ``register``: ``g``, ``now``, ``force``, ``rows``: ``[name, scheduled_at]``, ``t0``,
  ``t1``, ``left`` (names left alone) or ``err``.
* ``extend`` / ``unlock``: ``s``, ``g``, ``n`` (row name), ``lease``, ``t0``, ``until``
  (extend only); then ``extend_done`` / ``unlock_done``: ``s``, ``t1``, ``ok`` (``None``
  when it raised).
* ``log``: a WARNING-or-worse log record -- ``lvl``, ``logger``, ``tmpl`` (the
  message template), ``msg``, ``exc`` (exception type name).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNC_EVERY = 0.1
"""Seconds between ``fdatasync`` calls while records are being written."""

Record = dict[str, Any]


class ExecLog:
    """The writer; safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="chaos-log-sync", daemon=True)
        self._syncer.start()

    def write(self, record: Record) -> None:
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, data)
        self._dirty.set()

    def _sync_loop(self) -> None:
        while not self._closed.wait(SYNC_EVERY):
            if self._dirty.is_set():
                self._dirty.clear()
                os.fdatasync(self._fd)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._syncer.join()
        os.fdatasync(self._fd)
        os.close(self._fd)


@dataclass
class ProcessLog:
    """All records of one process, in the order it wrote them."""

    path: Path
    pid: int
    records: list[Record]


def read_log(path: Path) -> ProcessLog:
    """Read one log; a line cut short (only while its writer is still writing) is skipped."""
    records: list[Record] = []
    with path.open("rb") as source:
        for line in source:
            if not line.endswith(b"\n"):
                break
            records.append(json.loads(line))
    pid = next((int(r["pid"]) for r in records if r.get("e") == "boot"), -1)
    return ProcessLog(path, pid, records)


def read_logs(directory: Path) -> list[ProcessLog]:
    return [read_log(path) for path in sorted(directory.glob("*.jsonl"))]


def records_of(logs: list[ProcessLog]) -> Iterator[tuple[int, Record]]:
    """Every record with the pid of the process that wrote it."""
    for log in logs:
        for record in log.records:
            yield log.pid, record
