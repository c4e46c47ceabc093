from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
