"""Credentials for each side, and secrets kept out of everything the migrator writes.

**Per side.** MLflow reads one set of credentials per process (`MLFLOW_TRACKING_TOKEN`,
`_USERNAME`, `_PASSWORD`), but a source and a target rarely share users. So
`MIGRATOR_SOURCE_TRACKING_TOKEN` / `_USERNAME` / `_PASSWORD` and the `MIGRATOR_TARGET_…` twins
name each side's own; a side without them falls back to MLflow's variables. `bind(source,
target)` records which server is which in this process, and `authorize` (called by the HTTP
adapter `migrator.transport` installs in MLflow's session) sets the `Authorization` header of
every request to one of them: tracking, registry and proxied artifacts alike.

**Secrets.** Variables whose names say they are secret (`…TOKEN`, `…PASSWORD`, `…SECRET…`,
AWS keys) never go into Ray's `runtime_env` (which the dashboard shows): the driver ships
them to its workers as the actors' constructor argument (`secret_env`, `apply`). `redact`
removes `user:password@` from URLs, presigned-URL signatures and every known secret value from
a message; the CLI's log handler and every error row go through it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from typing import Any
from urllib.parse import urlparse

_SIDES = ("SOURCE", "TARGET")
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|SESSION|CREDENTIAL|AUTH")
_SECRET_PREFIXES = ("MLFLOW_", "AWS_", "MIGRATOR_", "DATABRICKS_", "BOTO_")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@")
_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sig|"
    r"AWSAccessKeyId|token|access_token)=)[^&\s'\"]+"
)
_MIN_SECRET_LEN = 4

#: Base URL (`scheme://host:port/path`) → `Authorization` header, for this process.
_AUTH: dict[str, str] = {}


def side_credentials(side: str) -> dict[str, str]:
    """The credentials of one side (`SOURCE` or `TARGET`): its own, else MLflow's."""
    out = {}
    for field in ("TOKEN", "USERNAME", "PASSWORD"):
        value = os.environ.get(f"MIGRATOR_{side}_TRACKING_{field}") or os.environ.get(
            f"MLFLOW_TRACKING_{field}"
        )
        if value:
            out[field.lower()] = value
    return out


def _header(creds: dict[str, str]) -> str | None:
    if creds.get("username") and creds.get("password"):
        pair = f"{creds['username']}:{creds['password']}".encode()
        return "Basic " + base64.standard_b64encode(pair).decode()
    if creds.get("token"):
        return f"Bearer {creds['token']}"
    return None


def _base(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return None
    host = parsed.netloc.rsplit("@", 1)[-1]
    return f"{parsed.scheme}://{host}{parsed.path.rstrip('/')}"


def bind(source: str, target: str) -> None:
    """Record in this process which server is the source and which the target, with each
    side's credentials (called by the driver and by every worker before a job)."""
    for side, uri in zip(_SIDES, (source, target), strict=True):
        base = _base(uri) if uri else None
        if base is None:
            continue
        header = _header(side_credentials(side))
        if header:
            _AUTH[base] = header
        else:
            _AUTH.pop(base, None)


def authorize(request: Any) -> None:
    """Set the `Authorization` header of a prepared request to one of the bound servers."""
    url = str(getattr(request, "url", "") or "")
    for base, header in _AUTH.items():
        if url == base or url.startswith((base + "/", base + "?")):
            request.headers["Authorization"] = header
            return


def is_secret(name: str) -> bool:
    return name.startswith(_SECRET_PREFIXES) and bool(_SECRET_NAME.search(name))


def secret_env() -> dict[str, str]:
    """The secret variables of this environment, for the workers (never a `runtime_env`)."""
    return {k: v for k, v in os.environ.items() if is_secret(k)}


def apply(secrets: dict[str, str]) -> None:
    """Put the driver's secrets into this worker's environment (once per process)."""
    for k, v in secrets.items():
        os.environ.setdefault(k, v)


def _known_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret(k) and len(v) >= _MIN_SECRET_LEN}
    values.update(h.split(" ", 1)[1] for h in _AUTH.values())
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """The text without credentials: URL user info, signed query strings, secret values."""
    if not text:
        return text
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    text = _SIGNED_QUERY.sub(r"\1***", text)
    for secret in _known_secrets():
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """A log filter that redacts every record's message (installed by the CLI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
