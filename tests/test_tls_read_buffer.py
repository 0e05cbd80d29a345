"""The TLS read buffer shared by the connections of an event loop (:func:`mssante.memory.tune`):
many TLS connections receiving at once on real loopback sockets, server and clients on two
event loops in two threads, each connection gets exactly its own bytes, and no connection
holds a read buffer of its own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import threading
from typing import Any

from mssante import memory
from mssante.auth.harness import DevPKI
from mssante.config import TLSSection
from mssante.tls import client_context, server_context

CONNECTIONS = 20
SIZE = 1024 * 1024 + 123  # not a multiple of a TLS record nor of the buffer


def _section(pki: DevPKI) -> TLSSection:
    return TLSSection(cert_file=pki.server.cert_file, key_file=pki.server.key_file, ca_file=pki.ca_file)


def _clients(
    port: int, context: ssl.SSLContext, payloads: list[bytes], answers: list[bytes], buffers: set[int]
) -> None:
    """In a thread of its own: its own event loop, so its own shared buffer."""

    async def one(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        buffers.add(id(writer.transport._ssl_protocol._ssl_buffer))  # type: ignore[attr-defined]
        for start in range(0, len(payload), 50_000):  # chunks interleave with the others'
            writer.write(payload[start : start + 50_000])
            await writer.drain()
        answer = await reader.readline()
        writer.close()
        return answer.strip()

    async def run() -> None:
        answers.extend(await asyncio.gather(*(one(p) for p in payloads)))

    asyncio.run(run())


async def test_concurrent_tls_reads_share_one_buffer_per_loop(dev_pki: DevPKI) -> None:
    memory.tune()
    protocols: list[Any] = []
    size_line = str(SIZE).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        digest = hashlib.sha256()
        received = 0
        while received < SIZE:
            chunk = await reader.read(70_000)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        # Each answer interleaves with the other connections' reads on this loop too.
        writer.write(digest.hexdigest().encode() + b" " + str(received).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(_section(dev_pki)))
    port = server.sockets[0].getsockname()[1]
    payloads = [os.urandom(SIZE) for _ in range(CONNECTIONS)]
    answers: list[bytes] = []
    client_buffers: set[int] = set()
    clients = threading.Thread(
        target=_clients, args=(port, client_context(_section(dev_pki)), payloads, answers, client_buffers)
    )
    try:
        clients.start()
        await asyncio.to_thread(clients.join, 120)
    finally:
        server.close()
        await server.wait_closed()
    assert not clients.is_alive()
    expected = [hashlib.sha256(p).hexdigest().encode() + b" " + size_line for p in payloads]
    assert answers == expected
    assert len(protocols) == CONNECTIONS
    server_buffers = {id(p._ssl_buffer) for p in protocols}
    assert len(server_buffers) == 1 and len(protocols[0]._ssl_buffer) == memory.TLS_READ_BUFFER
    assert len(client_buffers) == 1 and client_buffers != server_buffers  # one per loop thread
