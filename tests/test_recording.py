"""Record and replay: a session recorded from the simulator for 30 s and
replayed at --speed 10 answers as the live run did."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.ingest.recording import Recorder, read_records
from tests.support import REPO, GatewayProcess, free_port, port_open, wait_for

ROUTES = [
    "/v1/orderbook/BTC_USD?step=0.01",
    "/v1/depth/BTC_USD",
    "/v1/kline/BTC_USD?range=1m",
    "/v1/klines/BTC_USD?range=1m",
    "/v1/trades/BTC_USD?limit=1000",
    "/v1/orderbook/ETH_BTC?step=0.00000001",
]
CHANNELS = "orderbook:BTC_USD:0.01,depth:BTC_USD,kline:BTC_USD:1m,trades:BTC_USD,orderbook:ETH_BTC:0.00000001"


def test_recorder_rotates_by_size_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl.gz"
    recorder = Recorder(path, max_bytes=4096, keep=3)
    import random

    rng = random.Random(1)
    payloads = [rng.randbytes(300) for _ in range(200)]  # incompressible, so rotation happens
    for i, payload in enumerate(payloads):
        recorder.write(f"t/{i}", payload, 1_700_000_000_000 + i)
    recorder.close()
    parts = sorted(tmp_path.glob("rec.jsonl.gz*"))
    assert [p.name for p in parts] == ["rec.jsonl.gz", "rec.jsonl.gz.1", "rec.jsonl.gz.2", "rec.jsonl.gz.3"]
    records = list(read_records([tmp_path / "rec.jsonl.gz.3", tmp_path / "rec.jsonl.gz.2",
                                 tmp_path / "rec.jsonl.gz.1", path]))
    assert [r.payload for r in records] == payloads[-len(records):]  # the oldest parts rotated away
    assert [r.topic for r in records] == [f"t/{i}" for i in range(200 - len(records), 200)]
    assert all(r.ts == 1_700_000_000_000 + int(r.topic[2:]) for r in records)


def answers(gw: GatewayProcess) -> dict[str, dict[str, object]]:
    out = {}
    for route in ROUTES:
        body = gw.http.get(route + ("&" if "?" in route else "?") + "wait=0").json()
        out[route] = {k: body[k] for k in ("channel", "seq", "exchange_ts", "received_ts", "data")}
    return out


@pytest.mark.timeout(180)
@pytest.mark.processes
def test_a_recorded_session_replays_to_the_same_answers(tmp_path: Path) -> None:
    tcp, ws = free_port(), free_port()
    simulator_file = tmp_path / "simulator.jsonl.gz"
    simulator = subprocess.Popen(
        [sys.executable, "-m", "app", "simulate", "--tcp-port", str(tcp), "--ws-port", str(ws), "--seed", "9",
         "--record", str(simulator_file)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: port_open(tcp), 15, "the simulator")
    recording = tmp_path / "live.jsonl.gz"
    env = {
        "COINSUPER_URL": f"mqtt://127.0.0.1:{tcp}",
        "COINSUPER_ACCESS_KEY": "demo-access-key",
        "COINSUPER_EMAIL": "demouser@demo.domain",
        "COINSUPER_SUBSCRIBE": CHANNELS,
    }
    live = GatewayProcess(tmp_path, env, extra_args=["--record", str(recording)])
    try:
        wait_for(lambda: all(c["status"] == "live" for c in live.channels().values()), 15, "live channels")
        time.sleep(30)
    finally:
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(20)
    time.sleep(1)  # nothing more comes: these are the live run's final answers
    expected = answers(live)
    assert live.stop() == 0
    assert expected["/v1/trades/BTC_USD?limit=1000"]["seq"] > 20

    replay = GatewayProcess(tmp_path, {}, command="replay", extra_args=[str(recording), "--speed", "10"])
    try:
        started = time.monotonic()
        wait_for(lambda: replay.http.get("/v1/channels").json()["links"]
                 and all(link["reason"] == "replay finished" for link in replay.http.get("/v1/channels").json()["links"]),
                 30, "the replay to finish")
        took = time.monotonic() - started
        assert answers(replay) == expected
        assert took < 20  # ten times faster than the 30 s it took live (generous)
    finally:
        replay.stop()

    # The simulator's own recording replays too: every channel it published.
    from_simulator = GatewayProcess(tmp_path, {}, command="replay", extra_args=[str(simulator_file), "--speed", "50"])
    try:
        wait_for(lambda: all(link["reason"] == "replay finished"
                             for link in from_simulator.http.get("/v1/channels").json()["links"]), 30, "replayed")
        channels = from_simulator.channels()
        assert {"orderbook:ETH_USD:1.0", "kline:ETH_BTC:1w", "depth:ETH_BTC"} <= channels.keys()
        book = from_simulator.http.get("/v1/orderbook/BTC_USD?step=0.01").json()
        assert book["data"] == expected["/v1/orderbook/BTC_USD?step=0.01"]["data"]
        account = from_simulator.http.get("/v1/account/fills")
        assert account.status_code == 401  # private topics replayed too, and guarded as ever
    finally:
        from_simulator.stop()
