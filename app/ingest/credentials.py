"""The exchange's credential scheme (docs/upstream.md, "Credentials"). Pure.

Public market topics: one client id per topic, ``md5(access_key) + md5(email) +
md5(full_topic)``, with the published user and password. Private topics: client
id = access key, user ``api_private``, and a password signed with the current
time, made afresh for every connect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

PRIVATE_USERNAME = "api_private"


def md5hex(text: str) -> str:
    """Lowercase hex MD5 digest of the UTF-8 bytes of ``text``."""
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Login:
    """What one MQTT connect presents. The password never shows in a repr."""

    client_id: str
    username: str
    password: str = field(repr=False)


def public_client_id(access_key: str, email: str, topic: str) -> str:
    return md5hex(access_key) + md5hex(email) + md5hex(topic)


def private_signature(access_key: str, secret_key: str, email: str, ts_ms: int) -> str:
    return md5hex(f"{access_key},{secret_key},{email},{ts_ms}")


def private_login(access_key: str, secret_key: str, email: str, ts_ms: int) -> Login:
    password = f"{email},{ts_ms},{private_signature(access_key, secret_key, email, ts_ms)}"
    return Login(access_key, PRIVATE_USERNAME, password)
