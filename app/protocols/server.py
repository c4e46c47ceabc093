"""uvicorn's server, subclassed: streams end before the server stops, and
what start-up made is frozen out of the collector's way.

What it reaches into (``tests/test_drift.py`` pins uvicorn's ``Server``):
``handle_exit`` clears ``_captured_signals``, so that a graceful shutdown ends
the program with status 0 rather than the signal being raised again.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn


class GatewayServer(uvicorn.Server):
    """uvicorn's server. On SIGTERM or SIGINT it first ends every stream (so
    that each response is completed, not cut), and a graceful shutdown ends
    the program with status 0 rather than the signal being raised again."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up made lives as long as the process: out of the
        # collector's way, so that a full collection walks only what came
        # since (with 10,000 connections, it is their objects that count).
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        self.on_exit()
