from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Mosquitto, Publisher
from tests.world import Tape, World


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
