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


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"GATEWAY_REDIS_URL": "redis://:pw-in-url@h:6379/0", "GATEWAY_REDIS_SENTINELS": "h:26379",
          "GATEWAY_REDIS_MASTER": "m"}, "GATEWAY_REDIS_URL and GATEWAY_REDIS_SENTINELS are both set"),
        ({"GATEWAY_REDIS_SENTINELS": "h:26379"}, "needs GATEWAY_REDIS_MASTER"),
        ({"GATEWAY_REDIS_MASTER": "m"}, "without GATEWAY_REDIS_SENTINELS"),
        ({"GATEWAY_REDIS_SENTINELS": "h:26379,nohost", "GATEWAY_REDIS_MASTER": "m"}, "HOST:PORT"),
        ({"GATEWAY_REDIS_SENTINELS": "h:0", "GATEWAY_REDIS_MASTER": "m"}, "HOST:PORT"),
        ({"GATEWAY_REDIS_MIN_REPLICAS": "-1"}, "GATEWAY_REDIS_MIN_REPLICAS"),
    ],
)
def test_the_redis_settings_are_one_redis_or_its_sentinels(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert words in message and "\n" not in message and "pw-in-url" not in message


def test_sentinels_wait_for_one_replica_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis_min_replicas == 0 and not load_settings().clustered
    monkeypatch.setenv("GATEWAY_REDIS_SENTINELS", "10.0.0.1:26379, [::1]:26380")
    monkeypatch.setenv("GATEWAY_REDIS_MASTER", "coinsuper")
    monkeypatch.setenv("GATEWAY_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = load_settings()
    assert settings.sentinels == [("10.0.0.1", 26379), ("::1", 26380)]
    assert settings.redis_min_replicas == 1 and settings.gateway_redis_wait_ms == 200 and settings.clustered
    assert "sentinel-secret" not in repr(settings) + str(settings)
    monkeypatch.setenv("GATEWAY_REDIS_MIN_REPLICAS", "0")
    assert load_settings().redis_min_replicas == 0


@pytest.mark.processes
def test_both_redis_settings_exit_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
             "GATEWAY_REDIS_SENTINELS": "127.0.0.1:2", "GATEWAY_REDIS_MASTER": "m"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "both set" in lines[0] and "hunter2" not in result.stderr
