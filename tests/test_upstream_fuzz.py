"""Upstream fuzzing: malformed payloads made by hypothesis, published through a
real broker on every topic. The gateway stays up, serves the last good state,
and counts every rejected payload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support import ENV, GatewayProcess, Mosquitto, Publisher, sample, wait_for

pytestmark = pytest.mark.processes

TOPICS = {
    "orderbook:BTC_USD:0.01": (ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01", "orderBook_BTC_USD_0.01.json",
                               "/v1/orderbook/BTC_USD?step=0.01"),
    "depth:BTC_USD": (ENV + "/api/ws/v1/market/depth/BTC_USD", "depth_BTC_USD.json", "/v1/depth/BTC_USD"),
    "kline:BTC_USD:1m": (ENV + "/api/ws/v1/market/kline/BTC_USD/60000", "kline_BTC_USD_60000.json",
                         "/v1/kline/BTC_USD?range=1m"),
    "trades:BTC_USD": (ENV + "/api/ws/v1/market/tickers/BTC_USD", "tickers_BTC_USD.json", "/v1/trades/BTC_USD"),
}


def wrong_type_values() -> st.SearchStrategy[object]:
    """Values no field accepts: no string, no timestamp-sized integer, and no
    empty list (an empty side of a book is a valid book)."""
    return st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                     st.booleans(), st.none(), st.lists(st.integers(), min_size=1, max_size=3),
                     st.dictionaries(st.text(max_size=3), st.none(), max_size=2))


@st.composite
def malformed(draw: st.DrawFn, name: str) -> bytes:
    """A payload that is wrong by construction, in one of several ways."""
    good = json.loads(sample(name))
    text = json.dumps(good)
    way = draw(st.sampled_from(["truncated", "not-utf8", "wrong-top", "wrong-field", "missing-field", "junk"]))
    if way == "truncated":
        return text[: draw(st.integers(1, len(text) - 1))].encode()
    if way == "not-utf8":
        return b"\xff" + draw(st.binary(max_size=200))
    if way == "wrong-top":
        return json.dumps(draw(st.one_of(st.integers(), st.text(max_size=20), st.none(),
                                         st.just({}) if isinstance(good, list) else st.just([])))).encode()
    target = good[0] if isinstance(good, list) else good
    key = draw(st.sampled_from(sorted(k for k in target if k not in ("amount", "limitSize", "stepValue", "email"))))
    if way == "wrong-field":
        target[key] = draw(wrong_type_values().filter(lambda v: not isinstance(v, str)))
    elif way == "missing-field":
        del target[key]
    else:
        return draw(st.binary(min_size=1, max_size=300)).replace(b"{", b"(").replace(b"[", b"(") + b"\x00"
    return json.dumps(good).encode()


class Env:
    def __init__(self, gw: GatewayProcess, publisher: Publisher) -> None:
        self.gw, self.publisher = gw, publisher
        self.good = {c: gw.http.get(route).json() for c, (_, _, route) in TOPICS.items()}
        self.sent = dict.fromkeys(TOPICS, 0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(workdir)
    broker.start()
    publisher = Publisher(broker.tcp_port)
    gw = GatewayProcess(workdir, {"COINSUPER_URL": broker.url("tcp"), "COINSUPER_SUBSCRIBE": ",".join(TOPICS),
                                  "GATEWAY_STALE_FACTOR": "1000"})
    try:
        wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 15, "links up")
        for topic, name, route in TOPICS.values():
            publisher.publish(topic, sample(name))
            wait_for(lambda route=route: gw.http.get(route).status_code == 200, 10, route)
        yield Env(gw, publisher)
    finally:
        gw.stop()
        publisher.close()
        broker.kill()


# No shrinking: each step waits on a real broker; a failure reports what was sent.
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_malformed_payloads_through_a_real_broker(env: Env, data: st.DataObject) -> None:
    for channel, (topic, name, _) in TOPICS.items():
        payloads = data.draw(st.lists(malformed(name), min_size=1, max_size=8), label=channel)
        for payload in payloads:
            env.publisher.publish(topic, payload)
        env.sent[channel] += len(payloads)
    wait_for(lambda: all(env.gw.channels()[c]["rejected"] == n for c, n in env.sent.items()), 20,
             f"rejected counts to match {env.sent}")
    report = env.gw.channels()
    for channel, (_, _, route) in TOPICS.items():
        assert report[channel]["messages"] == 1
        assert report[channel]["link_connects"] == 1
        answer = env.gw.http.get(route).json()
        assert answer["data"] == env.good[channel]["data"] and answer["seq"] == env.good[channel]["seq"]
    assert env.gw.process.poll() is None
