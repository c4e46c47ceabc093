"""The upstream link's pure parts: endpoints, backoff, TLS contexts and the
reasons of TLS failures (the links themselves run against Mosquitto in the
integration tests)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from app.ingest.links import Backoff, Endpoint, tls_context, tls_refusal


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", Endpoint("broker", 1883, "tcp", False, None)),
        ("mqtts://broker:8884", Endpoint("broker", 8884, "tcp", True, None)),
        ("ws://broker", Endpoint("broker", 80, "websockets", False, "/mqtt")),
        ("wss://api-mqtt-premium.coinsuper.com:443/mqtt", Endpoint("api-mqtt-premium.coinsuper.com", 443, "websockets", True, "/mqtt")),
        ("wss://broker/other", Endpoint("broker", 443, "websockets", True, "/other")),
    ],
)
def test_endpoints_from_urls(url: str, expected: Endpoint) -> None:
    assert Endpoint.from_url(url) == expected
    assert str(expected).startswith(url.split("://")[0] + "://")


def test_backoff_doubles_is_capped_and_jittered() -> None:
    backoff = Backoff(0.5, 5.0)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (60, 5.0)):
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


def test_tls_contexts_verify_by_default_and_take_a_ca_and_a_client_certificate(tmp_path: Path) -> None:
    context = tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    ca = trustme.CA()
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("client")
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    context = tls_context(str(ca_file), str(cert), str(key))
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert any(c.get("subject") for c in context.get_ca_certs())


def test_tls_failures_have_a_readable_reason_even_when_wrapped() -> None:
    failure = ssl.SSLCertVerificationError(1, "certificate verify failed")
    failure.verify_message = "unable to get local issuer certificate"
    assert tls_refusal(failure) == "TLS: unable to get local issuer certificate"
    try:
        try:
            raise failure
        except OSError as exc:
            raise RuntimeError("connect failed") from exc
    except RuntimeError as wrapped:
        assert tls_refusal(wrapped) == "TLS: unable to get local issuer certificate"
    assert tls_refusal(ConnectionRefusedError(111, "refused")) is None
