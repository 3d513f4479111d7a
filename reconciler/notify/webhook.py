"""Webhook delivery: the rendered JSON body POSTed with httpx, signed the Standard Webhooks
way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) when the workspace has a
``webhook_secret``. The id is fresh per notification and kept across its retries, so a
receiver can drop a duplicate; each attempt is signed with its own timestamp.

Timeouts, transport errors, 429 and 5xx are transient; any other answer is terminal.
Redirects are not followed. Messages never repeat the URL's path or query (a Slack webhook
URL carries its token there).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from reconciler.notify.retry import DeliveryFailed, RetryPolicy

USER_AGENT = "activation-reconciler (notifications)"


def redacted(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell receivers apart, no token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def signer(secret: str) -> Webhook:
    """A Standard Webhooks signer; ValueError (without the secret) when it is malformed."""
    try:
        return Webhook(secret)
    except Exception:
        raise ValueError(
            "the webhook secret is not a Standard Webhooks secret (whsec_ followed by base64)"
        ) from None


def post(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    sign: Webhook | None,
    policy: RetryPolicy,
) -> tuple[int, DeliveryFailed | None]:
    """POST ``body`` to ``url``: (attempts made, the last failure or None)."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    msg_id = new_message_id()
    shown = redacted(url)

    def attempt() -> None:
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if sign is not None:
            headers["webhook-signature"] = sign.sign(msg_id, now, data)
        try:
            response = client.post(
                url, content=data.encode(), headers=headers, timeout=policy.timeout
            )
        except httpx.TimeoutException:
            raise DeliveryFailed(f"the webhook {shown} timed out", transient=True) from None
        except httpx.TransportError as exc:
            raise DeliveryFailed(
                f"cannot reach the webhook {shown} ({type(exc).__name__})", transient=True
            ) from None
        if response.is_success:
            return
        status = response.status_code
        raise DeliveryFailed(
            f"the webhook {shown} answered HTTP {status}",
            transient=status == 429 or status >= 500,
            retry_after=_retry_after(response),
        )

    _, attempts, failure = policy.call(attempt)
    return attempts, failure


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds: a number or an HTTP date (RFC 9110), as the HTTP layer
    of the destinations reads it."""
    from destinations.http import parse_retry_after

    return parse_retry_after(response.headers.get("retry-after"))
