"""Logging: readable lines, and a filter that keeps secrets out of every line.

The filter sits on the root handlers, so it sees every record, the HTTP
server's access log included: it removes ``access_token`` query values and any
configured secret (secret key, bearer tokens, public password) from the
formatted message before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

_QUERY_TOKEN = re.compile(r"(access_token=)[^&\s\"']*", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with secrets removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = _QUERY_TOKEN.sub(r"\g<1>" + REDACTED, text)
        text = _BEARER.sub(r"\g<1>" + REDACTED, text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str, secrets: Iterable[str] = (), json_lines: bool = False) -> None:
    """Readable lines (or JSON lines) on standard error, with secrets removed."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # amqtt and websockets narrate every packet at INFO; the gateway logs what matters.
    for noisy in ("amqtt", "transitions", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
