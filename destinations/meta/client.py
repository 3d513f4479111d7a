"""Graph API calls for Meta Custom Audiences, through the shared HTTP layer.

:func:`classify` is the one place Meta's answers become typed errors. Meta reports errors as
``{"error": {message, type, code, error_subcode, fbtrace_id}}``, usually with HTTP 400, and
the ``code`` carries the meaning:

==========================================  =============================================
``code`` (or ``error_subcode``)             error
==========================================  =============================================
190 (and 102, 104: no or bad session)       :class:`CredentialsRefused` (Disabled)
4, 17, 32, 613, 80000-80014                 :class:`ThrottledError`; ``retry_after`` from
                                            ``estimated_time_to_regain_access`` of the
                                            ``X-Business-Use-Case-Usage`` header, if given
1487366 (audience deleted)                  :class:`AudienceGone`
10, 200-299, 294                            :class:`TerminalError` (permission)
1, 2, 2650, and HTTP 5xx                    :class:`TransientError`
anything else                               :class:`TerminalError` with Meta's message
==========================================  =============================================

Each error carries ``meta_code`` and ``meta_subcode`` so the adapter can tell, e.g., an
object that does not exist (100/33) from other invalid parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from destinations.http import default_classify, describe, make_client, parse_retry_after, send
from destinations.meta.config import MetaConfig, MetaCredentials
from destinations.pacing import Pacer, meta_business_use_case_usage
from reconciler.errors import (
    AudienceGone,
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

__all__ = ["GRAPH", "GraphClient", "classify"]

GRAPH = "https://graph.facebook.com"

AUTH_CODES = frozenset({102, 104, 190})
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
AUDIENCE_DELETED = 1487366
PERMISSION_CODES = frozenset({10, 294, *range(200, 300)})
TEMPORARY_CODES = frozenset({1, 2, 2650})
#: ``code`` 100 with this subcode: the object does not exist (or is not visible to the token)
NO_SUCH_OBJECT = 33


def _error_body(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def classify(response: httpx.Response) -> DestinationError | None:
    """Meta's answer -> a typed error (see the module docstring), or None for success. An
    ``error`` object is an error whatever the status: Meta may answer 200 with one (a
    throttle among them), and taken as success it recorded members Meta never took."""
    error = _error_body(response)
    if error is None:
        return None if response.status_code < 300 else default_classify(response)
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    message = " ".join(str(error.get("message") or "no message").split())[:300]
    trace = error.get("fbtrace_id")
    said = f"Meta error {code}" + (f"/{subcode}" if subcode else "") + f": {message}"
    said += f" (fbtrace_id {trace})" if trace else ""
    what = f"{describe(response.request)} answered {response.status_code}; {said}"
    err: DestinationError
    if code in AUTH_CODES:
        err = CredentialsRefused(
            f"Meta refused the access token: {what}. Renew the integration's access_token "
            "(a system user token with ads_management does not expire)"
        )
    elif code in THROTTLE_CODES:
        usage = meta_business_use_case_usage(response)
        waits = [
            w
            for w in (
                usage.regain_after if usage is not None else None,
                parse_retry_after(response.headers.get("retry-after")),
            )
            if w is not None
        ]  # the longer of Meta's regain time and a Retry-After (a floor, as everywhere)
        err = ThrottledError(
            f"Meta throttled the call: {what}", retry_after=max(waits, default=None)
        )
    elif AUDIENCE_DELETED in (code, subcode):
        err = AudienceGone(
            f"the audience was deleted at Meta: {what}; the next plan creates it again"
        )
    elif code in PERMISSION_CODES:
        err = TerminalError(
            f"Meta denied permission: {what}. Give the token's user ads_management on the "
            "ad account and accept the Custom Audience terms"
        )
    elif code in TEMPORARY_CODES or response.status_code >= 500:
        err = TransientError(f"Meta failed the call: {what}")
    else:
        err = TerminalError(f"Meta refused the call: {what}")
    setattr(err, "meta_code", code)  # noqa: B010 - for tests and logs
    setattr(err, "meta_subcode", subcode)  # noqa: B010
    return err


def no_such_object(error: DestinationError) -> bool:
    """Meta's "object does not exist" (code 100, subcode 33)."""
    return getattr(error, "meta_code", None) == 100 and (
        getattr(error, "meta_subcode", None) == NO_SUCH_OBJECT
    )


class GraphClient:
    """Authenticated Graph calls for one integration. ``client`` (tests: pointed at a fake
    server) is used as given; otherwise one is made for ``endpoint`` (default
    ``https://graph.facebook.com``). Paths are prefixed with the API version."""

    def __init__(
        self,
        config: MetaConfig,
        credentials: MetaCredentials,
        endpoint: str | None,
        client: httpx.Client | None,
    ):
        self.version = config.api_version
        self.credentials = credentials
        self._owned = client is None  # an injected client is closed by whoever made it
        self.http = client or make_client(
            (endpoint or GRAPH).rstrip("/"),
            timeout=config.timeout(),
            max_connections=config.concurrency,
        )
        self.pacer = Pacer(
            requests_per_minute=config.requests_per_minute,
            max_concurrency=config.concurrency,
            usage=meta_business_use_case_usage,
        )

    def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        token = getattr(self.credentials, "access_token", None)
        if token is None:
            raise CredentialsRefused(
                "no Meta access token: set the environment variable the integration's "
                "credentials.access_token names"
            )
        params = {}
        proof = self.credentials.appsecret_proof()
        if proof is not None:
            params["appsecret_proof"] = proof
        return {"Authorization": f"Bearer {token.get_secret_value()}"}, params

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        content: bytes | None = None,
    ) -> dict[str, Any]:
        """One Graph call; the answer's JSON object (``{}`` when it has none). The body is
        ``body`` encoded as JSON, or ``content``: a JSON body already encoded."""
        headers, auth_params = self._auth()
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = self.http.build_request(
            method,
            f"/{self.version}/{path.lstrip('/')}",
            params={**(params or {}), **auth_params},
            json=body,
            content=content,
            headers=headers,
        )
        response = send(self.http, request, classify=classify, pacer=self.pacer)
        try:
            answer = response.json()
        except ValueError:
            # a success whose body cannot be read (cut short, a proxy's page): the call may
            # have been applied, so it is neither a refusal nor an answer; sent again (a
            # /users call's session and batch number make a repeat a no-op at Meta)
            err = TransientError(
                f"{describe(request)} answered {response.status_code} with no JSON (cut "
                "short, or not Meta's answer: check the integration's endpoint)"
            )
            err.unanswered = True
            raise err from None
        return answer if isinstance(answer, dict) else {}

    def pages(self, path: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a paged edge, following ``paging.cursors.after`` while the answer
        has a ``paging.next`` (the next URL itself is not followed: it carries the token)."""
        query = dict(params)
        while True:
            answer = self.call("GET", path, params=query)
            yield from (item for item in answer.get("data") or [] if isinstance(item, dict))
            paging = answer.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after or after == query.get("after"):
                return
            query["after"] = after

    def close(self) -> None:
        if self._owned:
            self.http.close()
