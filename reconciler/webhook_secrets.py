"""Standard Webhooks signing secrets (``whsec_<base64>``), checked one way wherever one is
given: a ``webhook`` integration's ``credentials.secret`` and the notifications'
``webhook_secret``. A problem is described without the secret."""

from __future__ import annotations

import base64
import binascii

__all__ = ["MIN_SECRET_BYTES", "SECRET_PREFIX", "secret_problem"]

SECRET_PREFIX = "whsec_"
#: Standard Webhooks secrets are 24 to 64 random bytes; fewer than this is refused
MIN_SECRET_BYTES = 16


def secret_problem(raw: str) -> str | None:
    """What is wrong with ``raw`` as a signing secret ("must ..."), or None."""
    if not raw.startswith(SECRET_PREFIX):
        return f"must start with {SECRET_PREFIX!r} (a Standard Webhooks secret)"
    body = raw[len(SECRET_PREFIX) :].rstrip("=")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"must be {SECRET_PREFIX!r} followed by base64"
    if len(key) < MIN_SECRET_BYTES:
        return f"must hold at least {MIN_SECRET_BYTES} random bytes"
    return None
