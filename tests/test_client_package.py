"""The client package (clients/python), as a service installs it: in a venv
of its own (.venv-client, made by `make test` from requirements/client.lock),
its tests run there against a real gateway (the demo: a simulated exchange
behind a real broker)."""

from __future__ import annotations

import os
import subprocess
import typing
from pathlib import Path

import coinsuper_gateway_client as client
import pytest

from app.http import schemas
from tests.support import REPO, gateway

CLIENT_VENV = REPO / ".venv-client"
# What the gateway runs on, none of which a service installing the client may get.
SERVER_ONLY = {"coinsuper-gateway", "fastapi", "starlette", "uvicorn", "amqtt", "aiomqtt", "paho-mqtt",
               "redis", "hiredis", "prometheus-client", "pydantic", "pydantic-settings", "websockets",
               "python-json-logger", "pyyaml", "uvloop", "httptools"}


def client_python() -> Path:
    python = CLIENT_VENV / "bin" / "python"
    if not python.exists():  # loudly: not testing the package is not passing
        pytest.fail(f"{python} is missing: `make test` makes the client's venv")
    return python


@pytest.mark.processes  # runs the client's venv
def test_installing_the_client_brings_none_of_the_servers_dependencies() -> None:
    listing = subprocess.run(
        [client_python(), "-c", "import importlib.metadata as m; "
         "print('\\n'.join(d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()))"],
        capture_output=True, text=True, check=True, cwd="/").stdout.split()  # not the repo's egg-info
    assert "coinsuper-gateway-client" in listing
    assert {"httpx", "httpx-ws"} <= set(listing)
    assert SERVER_ONLY & set(listing) == set()
    # It is the package as built from clients/python, not a link to the source tree.
    where = subprocess.run([client_python(), "-c", "import coinsuper_gateway_client as c; print(c.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert str(CLIENT_VENV) in where


@pytest.mark.processes
def test_the_clients_own_tests_pass_against_a_real_gateway(tmp_path: Path) -> None:
    with gateway(tmp_path, {"GATEWAY_TOKENS": "client-token"}, command="demo") as gw:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTEST_"))},
               "GATEWAY_URL": gw.base, "GATEWAY_TOKEN": "client-token"}
        run = subprocess.run(
            [client_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "clients/python/tests")],
            capture_output=True, text=True, env=env, cwd=REPO / "clients/python", timeout=100)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_the_clients_types_are_the_gateways_answers() -> None:
    """The client cannot import the gateway's models (it would bring the
    server's dependencies), so its TypedDicts are a copy: field for field the
    models that describe the answers (app/http/schemas.py)."""
    pairs = [(client.Envelope, schemas.Envelope), (client.OrderBook, schemas.OrderBook),
             (client.Depth, schemas.Depth), (client.Candle, schemas.Candle), (client.Trade, schemas.Trade),
             (client.Balance, schemas.Balance), (client.Assets, schemas.Assets), (client.Order, schemas.Order),
             (client.Fill, schemas.Fill)]
    for typed, model in pairs:
        assert list(typing.get_type_hints(typed)) == list(model.model_fields), typed.__name__
