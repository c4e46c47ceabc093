from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import load_settings
from app.domain.errors import ConfigError
from tests.support import REPO


def test_defaults_are_those_of_the_contract() -> None:
    settings = load_settings()
    assert settings.coinsuper_url == "wss://api-mqtt-premium.coinsuper.com:443/mqtt"
    assert settings.coinsuper_env == "exchange_ha_prod_hk"
    assert settings.gateway_host == "127.0.0.1" and settings.gateway_port == 8000
    assert settings.subscribe_channels == []


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("COINSUPER_URL", "http://example.test", "mqtt://"),
        ("COINSUPER_URL", "mqtt://host:notaport", "port"),
        ("GATEWAY_PORT", "eighty", "integer"),
        ("GATEWAY_PORT", "70000", "65535"),
        ("COINSUPER_SUBSCRIBE", "orderbook:BTC_USD:0.5", "0.01"),
        ("COINSUPER_QOS", "3", "2"),
    ],
)
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert words in message
    assert "\n" not in message


def test_secrets_stay_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINSUPER_SECRET_KEY", "very-secret-value")
    monkeypatch.setenv("GATEWAY_TOKENS", "token-one,token-two")
    settings = load_settings()
    assert settings.tokens == ["token-one", "token-two"]
    text = repr(settings) + str(settings)
    assert "very-secret-value" not in text and "token-one" not in text


@pytest.mark.processes
def test_the_program_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("coinsuper-gateway: configuration error: GATEWAY_PORT: ")
