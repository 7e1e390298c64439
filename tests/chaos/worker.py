"""One chaos process: ``python -m chaos.worker CONFIG.json`` (``tests/`` on the path).

It builds the app of :mod:`chaos.workload` with a logging repository and runs it with
``app.main()``, exactly as a user's process would: the first SIGINT stops it
gracefully, a second exits at once with status 1. Every WARNING-or-worse log record
and any exception that escapes is also written to the process's log.

The config is JSON: ``backend``, ``options`` (backend options), ``workload``
(:class:`chaos.workload.Workload`), ``slot`` (which of the driver's processes this
is), ``log`` (the path of this process's log) and ``seed``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from chaos.log import ExecLog
from chaos.workload import InjectedFailure, Workload, build_app


class CaptureHandler(logging.Handler):
    def __init__(self, log: ExecLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        self.log.write(
            {"e": "log", "t": record.created, "lvl": record.levelname, "logger": record.name}
            | {"tmpl": str(record.msg), "msg": record.getMessage()[:500], "exc": exc}
        )


def not_injected(record: logging.LogRecord) -> bool:
    """Keep the injected failures' tracebacks out of stderr (they are in the log)."""
    return not (record.exc_info and record.exc_info[0] is InjectedFailure)


def capture_logging(log: ExecLog) -> None:
    """WARNING and worse go to the log and to stderr. ``app.main()``'s own
    ``basicConfig`` then finds the root logger configured and leaves it alone."""
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stderr.setLevel(logging.WARNING)
    stderr.addFilter(not_injected)
    root = logging.getLogger()
    root.handlers[:] = [CaptureHandler(log), stderr]
    root.setLevel(logging.WARNING)

    def crashed(
        kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        log.write({"e": "crash", "t": time.time(), "exc": kind.__name__, "msg": str(error)[:500]})
        sys.__excepthook__(kind, error, traceback)

    def thread_crashed(args: threading.ExceptHookArgs) -> None:
        log.write(
            {"e": "crash", "t": time.time(), "exc": args.exc_type.__name__}
            | {"msg": str(args.exc_value)[:500], "thread": getattr(args.thread, "name", None)}
        )
        threading.__excepthook__(args)

    sys.excepthook = crashed
    threading.excepthook = thread_crashed


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    log = ExecLog(Path(config["log"]))
    log.write({"e": "boot", "pid": os.getpid(), "slot": config["slot"], "t": time.time()})
    capture_logging(log)
    chaos = build_app(
        config["backend"],
        config["options"],
        Workload.from_json(config["workload"]),
        log=log,
        seed=config["seed"],
    )
    status = 0
    try:
        chaos.app.main()
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    log.write({"e": "exit", "t": time.time(), "status": status})
    log.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
