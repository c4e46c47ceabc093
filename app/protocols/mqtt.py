"""The MQTT libraries' internals: one patch of paho-mqtt (masked WebSocket
control frames), and one private attribute of aiomqtt's client read
(:func:`retrieve_disconnection`, its ``_disconnected`` future).

The paho patch.

paho-mqtt 2.2.0 (the newest release) answers a WebSocket ping with a pong, and
a close with a close, framed with masking off (``_WebsocketWrapper._recv_impl``
calls ``_create_frame(OPCODE_PONG, payload, 0)``). RFC 6455 (5.1) says a client
masks every frame and a server closes the connection on an unmasked one
(``1002``): against any server that pings (the exchange's ``wss://`` endpoint,
Mosquitto or the simulator pinging every 20 s) every WebSocket link dropped at
its first ping.

The patch makes ``_create_frame`` mask whatever it is asked for, which is what
a client must do; nothing else of paho changes. ``tests/test_drift.py`` fails
when paho's ``_WebsocketWrapper`` is no longer the source this was written
against (then look whether it still frames the pong unmasked: if not, this
module can go), and ``tests/test_tls_ws.py`` holds a link for a minute against
a server that pings every second and enforces masking.
"""

from __future__ import annotations

from typing import Any

import aiomqtt
from paho.mqtt import client as _paho

_Wrapper: Any = _paho._WebsocketWrapper
_MARK = "_coinsuper_always_masked"


def apply() -> None:
    """Make paho's WebSocket client mask every frame it sends (idempotent)."""
    original = _Wrapper._create_frame
    if getattr(original, _MARK, False):
        return

    def create_frame(self: Any, opcode: int, data: bytearray, do_masking: int = 1) -> Any:
        return original(self, opcode, data, 1)

    setattr(create_frame, _MARK, True)
    _Wrapper._create_frame = create_frame


def applied() -> bool:
    return bool(getattr(_Wrapper._create_frame, _MARK, False))


def retrieve_disconnection(client: aiomqtt.Client) -> None:
    """Mark the reason of a lost connection as seen. A link stopped (its task
    cancelled) just as the broker dropped it leaves aiomqtt's disconnection
    future with an exception nobody awaits, which asyncio would log as an
    error at collection; the supervisor has already said why the link went."""
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()
