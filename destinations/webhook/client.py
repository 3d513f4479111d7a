"""Deliver one signed event to the receiver (Standard Webhooks) and classify its answer.

Headers: ``webhook-id`` (the call's idempotency key: the same on every retry of that call),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``), made by the ``standardwebhooks``
library from the ``whsec_...`` secret.

Answers (:func:`classify`): any 2xx is success; 410 means the receiver asked us to stop
(terminal); 401/403 refused the signature (the activation becomes Disabled); 429, 408, 425
and 5xx are retried (Throttled when a ``Retry-After`` is given, else Transient); other
answers are terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from destinations.http import body_excerpt, default_classify, describe, parse_retry_after, send
from destinations.redaction import PROCESS_REDACTOR
from reconciler.errors import (
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

__all__ = ["WebhookClient", "classify"]


def classify(response: httpx.Response) -> DestinationError | None:
    """The receiver's answer as a typed error, or None for any 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    said = body_excerpt(response)
    what = f"{describe(response.request)} answered {status} {response.reason_phrase}"
    what += f": {said}" if said else ""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 410:
        return TerminalError(
            f"the receiver asked to stop (410 Gone): {what}. Nothing more is sent until the "
            "receiver accepts events again or the integration's url is changed"
        )
    if status in (401, 403):
        return CredentialsRefused(
            f"the receiver refused the signature: {what}. Check that the integration's "
            "secret is the one the receiver verifies with"
        )
    if status == 429 or (status >= 500 and retry_after is not None):
        return ThrottledError(f"the receiver asked to slow down: {what}", retry_after=retry_after)
    if status in (408, 425) or status >= 500:
        return TransientError(f"the receiver failed: {what}")
    return default_classify(response)


class WebhookClient:
    """POSTs events to one URL through the shared HTTP layer, signed with ``secret``.

    ``secret`` is called at the first delivery, so an adapter built without credentials (a
    plan that contacts no destination) fails only if it tries to send."""

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        secret: Callable[[], str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.http = http
        self.url = url
        self._secret = secret
        self._signer: Webhook | None = None
        self._clock = clock

    def signer(self) -> Webhook:
        if self._signer is None:
            self._signer = Webhook(self._secret())
        return self._signer

    def headers(self, msg_id: str, body: str) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt (a fresh timestamp each time)."""
        now = self._clock()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer().sign(msg_id, now, body),
            "content-type": "application/json",
        }

    def deliver(self, msg_id: str, body: str) -> httpx.Response:
        """One attempt; the engine's retry policy calls again with the same ``msg_id``."""
        request = self.http.build_request(
            "POST", self.url, content=body.encode(), headers=self.headers(msg_id, body)
        )
        return send(self.http, request, classify=classify, redactor=PROCESS_REDACTOR)

    def close(self) -> None:
        self.http.close()
