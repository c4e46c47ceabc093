from __future__ import annotations

import asyncio
import functools
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import coinsuper_gateway_client._stream as client_stream
import httpx_ws
import pytest

from tests import frames
from tests.support import Mosquitto, Publisher, RedisServer
from tests.world import Tape, World

# Fixtures that start a real server: a test that uses one is marked `processes`
# (so is every test of a module that starts processes itself, by its
# `pytestmark`), and `make test-unit` runs the rest: `pytest -m "not processes"`.
SERVERS = {"mosquitto", "world", "redis_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVERS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `processes` that starts one fails, so the mark stays true."""
    if request.node.get_closest_marker("processes") is not None:
        return
    name = request.node.nodeid

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} starts a process: mark it `processes` (tests/conftest.py)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def world(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[World]:
    """Mosquitto, a publisher playing the exchange, and a tape of trades."""
    publisher = Publisher(mosquitto.tcp_port)
    try:
        yield World(tmp_path, mosquitto, publisher, Tape(publisher))
    finally:
        publisher.close()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """Debian's redis-server on a free port. A test (or module) marked
    `redis_keep` gets one that keeps its data across a restart (an
    append-only file); the others keep nothing, which is faster."""
    server = RedisServer(tmp_path, keep=request.node.get_closest_marker("redis_keep") is not None)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True)
def _frames_match_the_asyncapi_document(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every frame a test receives over httpx-ws or the client package's SSE
    parser (tests/support.py's EventStream checks its own) is checked against
    openapi/asyncapi.yaml; one that does not match fails the test."""

    def checked(receive: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(receive)
        def sync(*args: Any, **kwargs: Any) -> Any:
            frame = receive(*args, **kwargs)
            frames.check_ws(frame)
            return frame

        @functools.wraps(receive)
        async def asynchronous(*args: Any, **kwargs: Any) -> Any:
            frame = await receive(*args, **kwargs)
            frames.check_ws(frame)
            return frame

        return asynchronous if asyncio.iscoroutinefunction(receive) else sync

    for session in (httpx_ws.WebSocketSession, httpx_ws.AsyncWebSocketSession):
        for name in ("receive_text", "receive_json"):
            monkeypatch.setattr(session, name, checked(getattr(session, name)))
    parse = client_stream.sse_blocks

    async def sse_blocks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
        async for block in parse(lines):
            frames.check_sse(block)
            yield block

    monkeypatch.setattr(client_stream, "sse_blocks", sse_blocks)
    frames.take_failures()  # a thread of an earlier test's may have left some
    yield
    failures = frames.take_failures()
    if failures:
        pytest.fail("frames that do not match openapi/asyncapi.yaml:\n" + "\n".join(failures[:10]))
