from __future__ import annotations

import hashlib

from app.ingest.credentials import md5hex, private_login, public_client_id


def test_md5hex_is_lowercase_hex_of_utf8() -> None:
    assert md5hex("é") == hashlib.md5("é".encode()).hexdigest()
    assert md5hex("abc") == "900150983cd24fb0d6963f7d28e17f72"


def test_public_client_id_is_three_digests() -> None:
    topic = "exchange_ha_prod_hk/api/ws/v1/market/depth/BTC_USD"
    client_id = public_client_id("key", "me@x.y", topic)
    assert len(client_id) == 96
    assert client_id == md5hex("key") + md5hex("me@x.y") + md5hex(topic)


def test_private_login_signs_with_the_time() -> None:
    login = private_login("key", "secret", "me@x.y", 1542786801575)
    assert login.client_id == "key"
    assert login.username == "api_private"
    signature = hashlib.md5(b"key,secret,me@x.y,1542786801575").hexdigest()
    assert login.password == f"me@x.y,1542786801575,{signature}"
    assert "secret" not in repr(login) and signature not in repr(login)
