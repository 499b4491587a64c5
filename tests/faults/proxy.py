"""A TCP proxy for fault tests: listens on 127.0.0.1 only and forwards to a
PostgreSQL Unix socket, with faults switched on and off while it runs: added
latency, every live connection dropped, and a black hole (accepted connections,
and bytes, vanish without an answer).

It runs an asyncio loop on its own thread, so synchronous code under test can use
it as if it were a flaky network."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path


def sockets_to(port: int) -> int:
    """TCP sockets this process holds open to 127.0.0.1:port (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if fields[9] in inodes and remote_port == port:
            count += 1
    return count


class FaultProxy:
    def __init__(self, target_socket: Path) -> None:
        self.target_socket = target_socket
        self.latency = 0.0  # seconds added before forwarding each chunk
        self.blackhole = False
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control (from the test's thread) --------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    def drop_all(self) -> None:
        """Cut every live connection (both sides), as a dying middlebox would."""
        asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(10)

    def live(self) -> int:
        """Client connections currently open through the proxy."""
        return asyncio.run_coroutine_threadsafe(self._live(), self._loop).result(10)

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # --- the loop's side -----------------------------------------------------------

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, host="127.0.0.1", port=0)

    async def _live(self) -> int:
        return sum(1 for w in self._writers if not w.is_closing()) // 2

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._drop_all()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            while self.blackhole:  # accepted, never answered
                if writer.is_closing() or await _closed(reader):
                    return
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target_socket))
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.blackhole:
                    continue  # the bytes vanish
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.transport.abort()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Wait a little for data or EOF while black-holed; True once the peer left."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout=0.05)
    except TimeoutError:
        return False
    return data == b""
