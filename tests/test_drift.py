"""The library code the gateway copies, subclasses or patches is still the code
it was written against, and every machine installs the same versions.

Each entry names a class of uvicorn, aiomqtt or paho-mqtt that the gateway
depends on below its public API, the version it was read in, and a digest of
its source as that version has it. A newer release that changes that class
fails here, naming the library, both versions and what of ours to review,
instead of breaking the gateway silently. After the review: the new digest
and version go here, and the upper bound in pyproject.toml moves up
(`make lock` then installs it everywhere)."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.support import REPO

# (distribution, version read, module, class, digest, what of ours depends on it)
READ = [
    ("uvicorn", "0.55.0", "uvicorn.protocols.websockets.websockets_sansio_impl",
     "WebSocketsSansIOProtocol", "3a21a05ae5394036",
     "app/protocols/websocket.py: its subclass copies run_asgi and reads frames, "
     "curr_msg_data_type, conn, queue and close_timer; app/protocols/http.py wraps connection_lost"),
    ("uvicorn", "0.55.0", "uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol",
     "ec7f438cf5cec43e",
     "app/protocols/http.py: GuardedProtocol subclasses it and ends its request cycle"),
    ("uvicorn", "0.55.0", "uvicorn.server", "Server", "be750abcfc359d5b",
     "app/protocols/server.py: GatewayServer clears _captured_signals"),
    ("aiomqtt", "2.5.1", "aiomqtt.client", "Client", "71db003dd8034b9c",
     "app/protocols/mqtt.py: retrieve_disconnection reads _disconnected"),
    ("paho-mqtt", "2.2.0", "paho.mqtt.client", "_WebsocketWrapper", "6618e63d4e4e6259",
     "app/protocols/mqtt.py: patches _create_frame to mask every frame"),
]


@pytest.mark.parametrize("entry", READ, ids=[f"{e[0]}:{e[3]}" for e in READ])
def test_the_library_code_we_depend_on_is_the_code_we_read(entry: tuple[str, ...]) -> None:
    dist, read_in, module, name, digest, ours = entry
    source = inspect.getsource(getattr(importlib.import_module(module), name))
    found = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert found == digest, (
        f"{dist} {version(dist)} changed {module}.{name} (read in {dist} {read_in}); "
        f"review {ours}, then update tests/test_drift.py and the bound in pyproject.toml"
    )


def pins(lock: Path) -> dict[str, str]:
    """The versions a lock installs on this interpreter (its markers evaluated)."""
    found = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(?: ; ([^\\\n]+))?", lock.read_text(),
                       re.MULTILINE)
    return {re.sub(r"\[.*\]", "", n).lower(): v for n, v, marker in found
            if not marker or Marker(marker.strip()).evaluate()}


def test_the_locks_agree_and_are_what_is_installed() -> None:
    app, test = pins(REPO / "requirements/app.lock"), pins(REPO / "requirements/test.lock")
    assert app, "requirements/app.lock pins nothing"
    assert {n: test.get(n) for n in app} == app, "make lock: app.lock and test.lock differ"
    client = pins(REPO / "requirements/client.lock")  # the client package's venv
    assert {n: test.get(n) for n in client} == client, "make lock: client.lock and test.lock differ"
    installed = {n: version(n) for n in test}
    assert installed == test, "the venv is not what requirements/test.lock pins: make test reinstalls it"


def test_the_bounds_of_the_libraries_read_end_at_the_versions_read() -> None:
    project = (REPO / "pyproject.toml").read_text()
    for dist, read_in, *_ in READ:
        assert re.search(rf'"{dist}(\[\w+\])?>=[\d.]+,<={re.escape(read_in)}"', project), (
            f"pyproject.toml: {dist}'s upper bound is not {read_in}, the version read here")


# What only app/protocols may reach: the modules of the classes read above,
# and the private names of theirs that the gateway uses.
INTERNAL_MODULES = {module for _, _, module, *_ in READ}
INTERNAL_NAMES = {"_captured_signals", "_disconnected", "_WebsocketWrapper", "_create_frame",
                  "frames", "curr_msg_data_type", "close_timer"}


def test_only_app_protocols_reaches_into_the_libraries() -> None:
    """Everything that subclasses, copies or patches uvicorn, aiomqtt or paho
    lives in app/protocols: nowhere else imports the modules read above or
    uses their private names."""
    found = []
    for path in sorted((REPO / "app").rglob("*.py")):
        if "protocols" in path.relative_to(REPO / "app").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module in INTERNAL_MODULES) or (isinstance(node, ast.ImportFrom) and any(
                    f"{node.module}.{alias.name}" in INTERNAL_MODULES for alias in node.names)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import) and any(a.name in INTERNAL_MODULES for a in node.names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports an internal module")
            elif isinstance(node, ast.Attribute) and node.attr in INTERNAL_NAMES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} uses .{node.attr}")
    assert found == [], found
