"""The command line: help lists every setting; `channels` prints a table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from tests.support import REPO, gateway, wait_for


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.processes
def test_help_lists_every_setting() -> None:
    top = run("--help").stdout
    for name in Settings.model_fields:
        assert name.upper() in top, name


@pytest.mark.parametrize("command", ["serve", "demo", "replay"])
@pytest.mark.processes
def test_each_command_has_a_flag_for_every_setting(command: str) -> None:
    text = run(command, "--help").stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text, name
        assert name.upper() in text


@pytest.mark.processes
def test_a_flag_wins_over_its_variable_and_is_checked_alike() -> None:
    result = subprocess.run([sys.executable, "-m", "app", "serve", "--port", "nope"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "8000"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("coinsuper-gateway: configuration error: GATEWAY_PORT:")


@pytest.mark.processes
def test_channels_prints_the_state_of_a_running_gateway(tmp_path: Path) -> None:
    with gateway(tmp_path, {}, command="demo") as gw:
        wait_for(lambda: gw.channels()["orderbook:BTC_USD:0.01"]["status"] == "live", 10, "live")
        result = run("channels", "--url", gw.base)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["CHANNEL", "STATUS", "SEQ"]
        book = next(line for line in lines if line.startswith("orderbook:BTC_USD:0.01"))
        assert book.split()[1] == "live"
        assert lines[-1].endswith("open streams")
    result = run("channels", "--url", gw.base)
    assert result.returncode == 1 and "cannot read" in result.stderr
