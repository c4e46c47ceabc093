from __future__ import annotations

import pytest

from app.domain.channels import Channel, Kind, TopicTemplates, parse_channel, parse_channel_list
from app.domain.errors import InvalidInput, TooMany


@pytest.mark.parametrize("spelling", ["BTC_USD", "BTC-USD", "btc_usd", "BTC/USD", " btc/usd "])
def test_symbol_spellings(spelling: str) -> None:
    channel = Channel.depth(spelling)
    assert channel.symbol == "BTC_USD"
    assert channel.display_symbol == "BTC/USD"


@pytest.mark.parametrize("bad", ["BTCUSD", "BTC_", "_USD", "BTC_USD_EUR", "B!C_USD", "", "x" * 500])
def test_bad_symbols_name_what_is_allowed(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Channel.depth(bad)
    assert info.value.parameter == "symbol"
    assert "BTC_USD" in info.value.allowed
    assert len(info.value.detail) < 300


def test_steps_by_quote_currency() -> None:
    assert Channel.orderbook("BTC_USD", "0.01").param == "0.01"
    assert Channel.orderbook("BTC_USD", "1").param == "1.0"
    assert Channel.orderbook("BTC_USD", "0.10").param == "0.1"
    assert Channel.orderbook("ETH_BTC", "1e-8").param == "0.00000001"
    with pytest.raises(InvalidInput) as info:
        Channel.orderbook("ETH_BTC", "0.01")
    assert info.value.allowed == "one of 0.0001, 0.000001, 0.00000001"
    with pytest.raises(InvalidInput):
        Channel.orderbook("BTC_USD", "NaN")


def test_ranges_by_label_or_milliseconds() -> None:
    assert Channel.kline("BTC_USD", "1m").param == "1m"
    assert Channel.kline("BTC_USD", "604800000").param == "1w"
    with pytest.raises(InvalidInput) as info:
        Channel.kline("BTC_USD", "2m")
    assert "1m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 12h, 1d, 1w" in info.value.allowed


def test_parse_channel_names() -> None:
    assert parse_channel("orderbook:btc-usd:0.01").name == "orderbook:BTC_USD:0.01"
    assert parse_channel("kline:BTC_USD:60000").name == "kline:BTC_USD:1m"
    assert parse_channel("trades:BTC/USD").name == "trades:BTC_USD"
    assert parse_channel("fills") == Channel(Kind.FILLS)
    with pytest.raises(InvalidInput) as info:
        parse_channel("candles:BTC_USD")
    assert "orderbook" in info.value.allowed
    with pytest.raises(InvalidInput) as info:
        parse_channel("orderbook:BTC_USD")
    assert info.value.allowed == "the form orderbook:SYMBOL:STEP"


def test_channel_lists_are_deduplicated_and_capped() -> None:
    channels = parse_channel_list("trades:BTC_USD,trades:btc-usd,depth:BTC_USD", cap=2)
    assert [c.name for c in channels] == ["trades:BTC_USD", "depth:BTC_USD"]
    with pytest.raises(TooMany):
        parse_channel_list("trades:BTC_USD,depth:BTC_USD,depth:ETH_USD", cap=2)
    with pytest.raises(InvalidInput):
        parse_channel_list(" , ", cap=2)


def test_topics_follow_the_documented_templates() -> None:
    t = TopicTemplates()
    env = "exchange_ha_prod_hk"
    assert t.topic(env, parse_channel("orderbook:BTC_USD:0.01")) == env + "/api/ws/v1/market/orderBook/BTC_USD/0.01"
    assert t.topic(env, parse_channel("kline:BTC_USD:1w")) == env + "/api/ws/v1/market/kline/BTC_USD/604800000"
    assert t.topic(env, parse_channel("trades:ETH_BTC")) == env + "/api/ws/v1/market/tickers/ETH_BTC"
    assert t.topic(env, parse_channel("depth:BTC_USD")) == env + "/api/ws/v1/market/depth/BTC_USD"
    assert t.topic(env, Channel(Kind.FILLS), "a@b.c") == env + "/ws/personal/v1/trade/change/a@b.c"
    assert t.topic(env, Channel(Kind.ASSETS), "a@b.c") == env + "/api/ws/personal/v1/asset/change/a@b.c"


def test_ranges_refuse_non_ascii_digits() -> None:
    with pytest.raises(InvalidInput):
        Channel.kline("BTC_USD", "²")
