"""Logging: readable lines, and a filter that keeps secrets out of every line.

The filter sits on the root handlers, so it sees every record, the HTTP
server's access log included: it removes the values of token-like query
parameters (judged on the percent-decoded query, names and values, so that
``access%5Ftoken=%64…`` is caught too), bearer values, and any configured
secret (secret key, bearer tokens) from the formatted message before it is
written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote_plus

from pythonjsonlogger.json import JsonFormatter

_QUERY = re.compile(r"\?([^\s\"']*)")
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=%-]+", re.IGNORECASE)
# Query parameters whose values are never written, whatever they hold.
SECRET_PARAMETERS = frozenset({"access_token", "token", "password", "secret", "secret_key"})
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with secrets removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        if "?" in text:
            text = _QUERY.sub(self._redact_query, text)
        text = _BEARER.sub(r"\g<1>" + REDACTED, text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _redact_query(self, match: re.Match[str]) -> str:
        """A query string judged on its decoded form: ``access%5Ftoken=%64…``
        is the token as surely as ``access_token=d…`` is."""
        pairs = []
        for pair in match.group(1).split("&"):
            name, sep, value = pair.partition("=")
            decoded_name = unquote_plus(name).strip().lower()
            decoded_value = unquote_plus(value)
            if decoded_name in SECRET_PARAMETERS or any(
                secret in decoded_value or secret in unquote_plus(name) for secret in self.secrets
            ):
                pair = name + sep + REDACTED if sep else REDACTED
            pairs.append(pair)
        return "?" + "&".join(pairs)

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
