"""A TCP proxy for fault tests: listens on 127.0.0.1 only and forwards to a
PostgreSQL Unix socket or a TCP service on 127.0.0.1 (a key service), with faults
switched on and off while it runs: added latency (both ways, or on replies only:
a slow service), every live connection dropped, a black hole (accepted
connections, and bytes, vanish without an answer), a service that is down
(every connection reset at once) and a canned answer to every request (an HTTP
throttling reply, as AWS KMS or Vault send under load).

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
    def __init__(self, target_socket: Path | None = None, target_port: int = 0) -> None:
        assert (target_socket is None) != (not target_port), "one target"
        self.target_socket = target_socket
        self.target_port = target_port
        self.latency = 0.0  # seconds added before forwarding each chunk
        self.reply_delay = 0.0  # seconds added before each chunk of the service's reply
        self.blackhole = False
        self.down = False  # every new connection is reset at once
        self.answer: bytes | None = None  # sent in reply to each request, then closed
        self.answered = 0  # requests given the canned answer
        self.requests = 0  # requests forwarded (chunks sent up after a reply or none)
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

    def reset(self) -> None:
        """Every fault off."""
        self.latency = self.reply_delay = 0.0
        self.blackhole = self.down = False
        self.answer = None

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
            if self.down:
                return  # reset (finally aborts)
            if self.answer is not None:
                await self._answer(reader, writer, self.answer)
                return
            while self.blackhole:  # accepted, never answered
                if writer.is_closing() or await _closed(reader):
                    return
            if self.target_socket is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.target_socket))
            else:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            asked = asyncio.Event()  # a request went up: its reply is the next to delay
            await asyncio.gather(
                self._pump(reader, up_writer, asked=asked),
                self._pump(up_reader, writer, asked=asked, reply=True),
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
    ) -> None:
        """Read one HTTP request (headers, then Content-Length bytes), send the answer."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        self.answered += 1
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        asked: asyncio.Event,
        reply: bool = False,
    ) -> None:
        try:
            while chunk := await src.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                if not reply:
                    if not asked.is_set():
                        self.requests += 1
                    asked.set()
                elif asked.is_set():  # the first chunk of a reply: the service is slow
                    asked.clear()
                    if self.reply_delay:
                        await asyncio.sleep(self.reply_delay)
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
