"""An app for ``pyncette run``: each process that starts it leaves a file named after its
pid in ``PYNCETTE_CLI_MARKERS``, and a frequent task records that it ran there too.
Tasks live in the SQLite file ``PYNCETTE_CLI_SQLITE``; with ``PYNCETTE_CLI_HEALTH_PORT``
the app serves its health check on that port. With ``PYNCETTE_CLI_FAIL_ONE``, the first
process to start waits until another one is running, then fails."""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pyncette import Context, Pyncette, PyncetteContext

MARKERS = Path(os.environ.get("PYNCETTE_CLI_MARKERS", "."))

app = Pyncette(sqlite_database=os.environ.get("PYNCETTE_CLI_SQLITE", ":memory:"))

if os.environ.get("PYNCETTE_CLI_HEALTH_PORT"):
    from pyncette.healthcheck import use_healthcheck_server

    use_healthcheck_server(
        app, port=int(os.environ["PYNCETTE_CLI_HEALTH_PORT"]), bind_address="127.0.0.1"
    )


@app.fixture()
async def started(app_context: PyncetteContext) -> AsyncIterator[None]:
    if os.environ.get("PYNCETTE_CLI_FAIL_ONE") and _first_to_start():
        while not list(MARKERS.glob("started-*")):
            await asyncio.sleep(0.05)
        raise RuntimeError("this worker fails at start-up")
    (MARKERS / f"started-{os.getpid()}").touch()
    yield
    (MARKERS / f"stopped-{os.getpid()}").touch()


@app.task(interval=datetime.timedelta(milliseconds=50))
async def frequent(context: Context) -> None:
    (MARKERS / f"ran-{os.getpid()}").touch()


def _first_to_start() -> bool:
    try:
        os.close(os.open(MARKERS / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
