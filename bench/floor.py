"""The floor: the least a server can do to fan events out, beside the gateway
and nchan in bench/fanout.py. One uvloop process, no framework: it takes each
event as nchan does (``POST /pub/<id>``, the body one event's data), makes its
Server-Sent Events frame and its WebSocket frame once, and writes them to every
socket subscribed to that id (``GET /sub/<id>``; with ``Sec-WebSocket-Key``, a
WebSocket). No limits, no buffers of its own, no pings, no history: what any
real server does costs more than this.

    python bench/floor.py --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
from collections import defaultdict

import uvloop
from websockets.frames import Frame, Opcode

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
CREATED = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

# (channel id, "sse" or "ws") → the subscribed sockets
subscribers: dict[tuple[bytes, str], set[asyncio.Transport]] = defaultdict(set)


def publish(channel: bytes, data: bytes) -> None:
    """Frame the event once per form; write it to every subscriber of the channel."""
    sse = b"event: orderbook\ndata: " + data + b"\n\n"
    ws = Frame(Opcode.TEXT, data).serialize(mask=False)
    for transport in subscribers[(channel, "sse")]:
        transport.write(sse)
    for transport in subscribers[(channel, "ws")]:
        transport.write(ws)


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.body: tuple[bytes, int] | None = None  # a publish's channel and body length, while it arrives
        self.subscribed: tuple[bytes, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's, not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.subscribed is not None and self.transport is not None:
            subscribers[self.subscribed].discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.subscribed is not None:
            return  # a subscriber says nothing that matters (a WebSocket's frames are ignored)
        assert self.transport is not None
        self.buffer += data
        while True:
            if self.body is not None:
                channel, length = self.body
                if len(self.buffer) < length:
                    return
                publish(channel, self.buffer[:length])
                self.buffer, self.body = self.buffer[length:], None
                self.transport.write(CREATED)
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            line, *lines = head.split(b"\r\n")
            method, target, _ = line.split(b" ", 2)
            fields = {}
            for header in lines:
                name, _, value = header.partition(b":")
                fields[name.strip().lower()] = value.strip()
            if method == b"POST" and target.startswith(b"/pub/"):
                self.body = (target[5:], int(fields.get(b"content-length", b"0")))
            elif method == b"GET" and target.startswith(b"/sub/"):
                key = fields.get(b"sec-websocket-key")
                if key:
                    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                    self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                         b"connection: Upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n")
                else:
                    self.transport.write(SSE_HEAD)
                self.subscribed = (target[5:], "ws" if key else "sse")
                subscribers[self.subscribed].add(self.transport)
                return
            else:
                self.transport.write(NOT_FOUND)
                self.transport.close()
                return


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=16384)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
