"""A lean ASGI response for Server-Sent Events.

Why not sse-starlette's ``EventSourceResponse``: it runs an anyio task group of
three tasks per stream (sender, disconnect listener, exit-signal listener) and
a cancel scope per send. With 1,000 clients over 20 books (bench/fanout.py) it
cost 49 KiB of resident memory per client and held the gateway to about 13,500
deliveries per core-second; the targets are 15 KiB and 50,000. This response
runs one extra task per stream (the disconnect listener) and sends the bytes
the store encoded, as they are.

The body is an async iterator of bytes. The stream ends when it ends, when the
client disconnects (the subscription is closed, which wakes the iterator), or
when a send stays blocked past ``GATEWAY_SEND_TIMEOUT_S``: the response notes
when each send starts, and :meth:`app.fanout.Fanout.tick` cancels a sender
blocked too long (a client that stopped reading). Nothing here knows about
events: frames come encoded.

However a stream ends, its connection is closed with it (a stalled one at
once, dropping what is queued): a stream that is over must not keep a socket,
a file descriptor and a kernel send queue. While it runs, what its connection
may queue is bounded (``GATEWAY_STREAM_SEND_BUFFER`` in the kernel,
``GATEWAY_STREAM_WRITE_BUFFER`` in the server), so that a client that stops
reading costs little before the send timeout ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.fanout import Subscription
from app.http.server import TRANSPORT, bound_stream, end_connection

# Where GatewayApp puts the server's own send in the scope.
RAW_SEND = "coinsuper.raw_send"

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class EventStreamResponse(Response):
    """Streams an async iterator of SSE bytes to one client."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        subscription: Subscription,
        *,
        send_buffer: int = 32768,
        write_buffer: int = 32768,
    ) -> None:
        # A Response for the framework's sake; nothing of Response.__init__ applies.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(HEADERS)
        self.events = body
        self.subscription = subscription
        self.send_buffer = send_buffer
        self.write_buffer = write_buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self.subscription
        subscription.sender = asyncio.current_task()
        transport = scope.get(TRANSPORT)
        if transport is not None:
            bound_stream(transport, self.send_buffer, self.write_buffer)
        watcher = asyncio.create_task(self._watch(receive))
        # Body chunks go straight to the server: the middleware around the app
        # cares only for the start of a response, and a stream sends thousands.
        raw_send: Send = scope.get(RAW_SEND, send)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            async for chunk in self.events:
                subscription.sending_since = time.monotonic()
                await raw_send({"type": "http.response.body", "body": chunk, "more_body": True})
                subscription.sending_since = None
                subscription.last_sent = time.monotonic()
            await raw_send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # a client that went away: its stream ends
        except asyncio.CancelledError:
            if not subscription.stalled:
                raise  # the server is stopping this task: not ours to swallow
            # Fanout.tick cancelled a send blocked past the send timeout: the
            # client stopped reading; its stream ends here.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
            if transport is not None:
                end_connection(transport, at_once=subscription.stalled)

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.subscription.close()
                return
