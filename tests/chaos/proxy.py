"""A loopback TCP proxy the driver controls: one listening port per process, each
forwarding to the same server, so that one process's connections can be stalled while
the others' flow.

Per listener: ``latency`` delays every chunk forwarded, ``stall`` holds data in one or
both directions (new connections are accepted and never answered), ``resume`` delivers
what was held (``flush``) or drops those connections, and ``cut`` drops every
connection at once. It runs its own asyncio loop in a thread; the methods here are
called from the driver's thread and return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
UP, DOWN = "up", "down"
"""Client to server, and server to client."""


class _Link:
    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class _Listener:
    def __init__(self) -> None:
        self.gates = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        for gate in self.gates.values():
            gate.set()
        self.latency = 0.0
        self.links: set[_Link] = set()
        self.server: asyncio.Server | None = None
        self.port = 0


class Proxy:
    """Use as a context manager; :attr:`ports` are the listening ports, one per slot."""

    def __init__(self, upstream: tuple[str, int], listeners: int) -> None:
        self.upstream = upstream
        self.count = listeners
        self.ports: list[int] = []
        self.actions: list[tuple[float, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy")
        self._listeners: list[_Listener] = []

    def __enter__(self) -> Proxy:
        self._thread.start()
        try:
            self._listeners = self._call(self._open)
        except BaseException:
            self.close()
            raise
        self.ports = [listener.port for listener in self._listeners]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def _call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self._loop).result(timeout)

    # -- inside the loop ---------------------------------------------------------------------

    async def _open(self) -> list[_Listener]:
        listeners = []
        for _ in range(self.count):
            listener = _Listener()
            listener.server = await asyncio.start_server(self._handler(listener), "127.0.0.1", 0)
            listener.port = listener.server.sockets[0].getsockname()[1]
            listeners.append(listener)
        return listeners

    async def _shutdown(self) -> None:
        for listener in self._listeners:
            if listener.server is not None:
                listener.server.close()
            for gate in listener.gates.values():
                gate.set()
            for link in list(listener.links):
                link.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            if listener.server is not None:
                await listener.server.wait_closed()

    def _handler(
        self, listener: _Listener
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(listener, reader, writer)

        return serve

    async def _serve(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        link = _Link()
        link.writers.append(writer)
        listener.links.add(link)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            link.writers.append(upstream_writer)
            link.tasks = [
                asyncio.ensure_future(self._pump(listener, reader, upstream_writer, UP)),
                asyncio.ensure_future(self._pump(listener, upstream_reader, writer, DOWN)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (asyncio.CancelledError, Exception):
            pass
        finally:
            listener.links.discard(link)
            link.abort()
            for task in link.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _pump(
        self,
        listener: _Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        gate = listener.gates[direction]
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                await gate.wait()
                if listener.latency:
                    await asyncio.sleep(listener.latency)
                writer.write(data)
                await writer.drain()

    # -- controls (from the driver's thread) ----------------------------------------------------

    def _pick(self, slots: Iterable[int] | None) -> list[_Listener]:
        if slots is None:
            return list(self._listeners)
        return [self._listeners[slot] for slot in slots]

    def _note(self, action: str) -> None:
        self.actions.append((time.time(), action))

    def latency(self, seconds: float, slots: Iterable[int] | None = None) -> None:
        chosen = self._pick(slots)

        async def apply() -> None:
            for listener in chosen:
                listener.latency = seconds

        self._call(apply)
        self._note(f"latency {seconds * 1000:.0f} ms on {self._names(chosen)}")

    def cut(self, slots: Iterable[int] | None = None) -> None:
        chosen = self._pick(slots)

        async def apply() -> None:
            for listener in chosen:
                for link in list(listener.links):
                    link.abort()

        self._call(apply)
        self._note(f"cut all connections of {self._names(chosen)}")

    def stall(
        self, slots: Iterable[int] | None = None, directions: Iterable[str] = (UP, DOWN)
    ) -> None:
        chosen, which = self._pick(slots), list(directions)

        async def apply() -> None:
            for listener in chosen:
                for direction in which:
                    listener.gates[direction].clear()

        self._call(apply)
        self._note(f"stall {'+'.join(which)} on {self._names(chosen)}")

    def resume(self, slots: Iterable[int] | None = None, *, flush: bool) -> None:
        """Deliver what was held (``flush``), or drop the stalled connections."""
        chosen = self._pick(slots)

        async def apply() -> None:
            for listener in chosen:
                if not flush:
                    for link in list(listener.links):
                        link.abort()
                for gate in listener.gates.values():
                    gate.set()

        self._call(apply)
        self._note(f"resume {self._names(chosen)} ({'flush held data' if flush else 'drop'})")

    def reset(self) -> None:
        """Back to plain forwarding (held data is delivered)."""
        self.resume(flush=True)
        self.latency(0.0)

    def _names(self, chosen: list[_Listener]) -> str:
        if len(chosen) == len(self._listeners):
            return "every process"
        return ", ".join(f"process {self._listeners.index(listener)}" for listener in chosen)
