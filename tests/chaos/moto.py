"""``python -m chaos.moto``: the suite's moto DynamoDB server (one request at a time; see
tests/backend_dynamodb.py) on a free loopback port, in a process of its own. Prints the
port on the first line of stdout; stops on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys
import threading

from backend_dynamodb import MotoServer


def main() -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = MotoServer()
    server.start()
    try:
        print(server.endpoint.rsplit(":", 1)[1], flush=True)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
