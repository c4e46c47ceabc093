"""The client's tests run against a real gateway: ``GATEWAY_URL`` (and
``GATEWAY_TOKEN`` for the account) name it. The gateway's own suite starts one
(``coinsuper-gateway demo`` on free ports) and runs these tests in the
client's venv (tests/test_client_package.py); by hand:

    GATEWAY_URL=http://127.0.0.1:8000 GATEWAY_TOKEN=… pytest clients/python/tests
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def base_url() -> str:
    url = os.environ.get("GATEWAY_URL")
    if not url:  # loudly: a client test with no gateway tested nothing
        pytest.fail("GATEWAY_URL is not set: these tests need a running gateway")
    return url


@pytest.fixture
def token() -> str:
    value = os.environ.get("GATEWAY_TOKEN")
    if not value:
        pytest.fail("GATEWAY_TOKEN is not set: the account tests need the gateway's token")
    return value
