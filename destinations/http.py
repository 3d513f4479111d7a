"""The shared HTTP layer of destination adapters: one client factory, one ``send``.

    client = make_client(base_url, auth_headers={"Authorization": f"Bearer {token}"})
    response = send(client, client.build_request("POST", "/x", json=body),
                    classify=vendor_classify, pacer=pacer)

- :func:`make_client` returns an ``httpx.Client`` with timeouts on connect/read/write/pool,
  connection limits, ``User-Agent: activation-reconciler/<version>``, and https enforced
  for every request (plain http only to loopback: 127.0.0.0/8, ::1, localhost). Its secret
  headers are registered with the process redactor.
- :func:`send` paces (a :class:`~destinations.pacing.Pacer`), sends, lets the pacer observe
  usage headers, and maps the answer to the typed errors of :mod:`reconciler.errors` through
  the vendor's ``classify(response) -> DestinationError | None`` (default:
  :func:`default_classify`). Transport failures (timeouts, refused or reset connections)
  become :class:`~reconciler.errors.TransientError`. Every message is redacted.
- Retrying is the :class:`~destinations.retry.RetryPolicy`'s job; the engine wraps each
  destination call in one, so ``send`` retries only when given a ``policy``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import httpx
from pydantic import Field

from destinations.base import DestinationConfig
from destinations.pacing import Pacer
from destinations.redaction import PROCESS_REDACTOR, Redactor, protect
from destinations.retry import RetryPolicy
from reconciler.errors import (
    ConfigError,
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

__all__ = [
    "Classifier",
    "HttpOptions",
    "default_classify",
    "describe",
    "is_loopback",
    "make_client",
    "parse_retry_after",
    "send",
    "default_user_agent",
]

log = logging.getLogger("destinations.http")

Classifier = Callable[[httpx.Response], DestinationError | None]

#: characters of an error body quoted in a message
BODY_EXCERPT = 200


class HttpOptions(DestinationConfig):
    """Settings every HTTP integration accepts in its ``config:`` block (an adapter's
    config model subclasses this)."""

    retry_budget_minutes: float = Field(
        15.0, gt=0, le=24 * 60, description="how long one call may keep retrying"
    )
    timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=600,
        description="read/write/pool timeout of one request, and the most its answer body may take",
    )
    connect_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="how long opening a connection may take"
    )

    def timeout(self) -> httpx.Timeout:
        t = self.timeout_seconds
        return httpx.Timeout(connect=self.connect_timeout_seconds, read=t, write=t, pool=t)

    def retry_policy(self, **sizes) -> RetryPolicy:
        """The policy for this integration; ``sizes`` are the adapter's own (e.g.
        ``throttle_backoff_start=60`` for a vendor with hourly quotas)."""
        return RetryPolicy(budget_minutes=self.retry_budget_minutes, **sizes)


# ---------------------------------------------------------------------------- client


DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def default_user_agent() -> str:
    try:
        v = version("activation-reconciler")
    except PackageNotFoundError:  # running from a source tree that was never installed
        v = "0+unknown"
    return f"activation-reconciler/{v}"


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: httpx.URL | str) -> None:
    """Raise ConfigError unless ``url`` is https, or http to a loopback host."""
    u = httpx.URL(url)
    shown = PROCESS_REDACTOR(str(u.copy_with(query=None, fragment=None)))
    if u.scheme in ("http", "https") and not u.host:
        raise ConfigError(f"endpoint {PROCESS_REDACTOR(str(url))!r} names no host")
    if u.port is not None and not 0 < u.port < 65536:
        raise ConfigError(f"endpoint {shown}: port {u.port} is not a TCP port (1-65535)")
    if u.scheme == "https" or (u.scheme == "http" and is_loopback(u.host)):
        return
    if u.scheme == "http":
        raise ConfigError(
            f"endpoint {shown} must use https:// (plain http is allowed only to "
            "127.0.0.1, ::1 and localhost, e.g. a local test server)"
        )
    raise ConfigError(f"endpoint {shown} must be an https:// URL")


def _check_request(request: httpx.Request) -> None:
    check_url(request.url)


def make_client(
    base_url: str,
    *,
    auth_headers: Mapping[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    max_connections: int = 10,
    user_agent: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for one integration. ``auth_headers`` values and the
    ``basic_auth`` password are secrets (registered for redaction); ``headers`` are not.
    ``transport`` is for tests (``httpx.MockTransport``)."""
    check_url(base_url)
    secrets: list[str] = []
    for value in (auth_headers or {}).values():
        secrets.append(value)
        scheme, _, token = value.partition(" ")
        secrets.append(token or scheme)
    if basic_auth is not None:
        secrets.append(basic_auth[1])
    protect(*secrets)
    all_headers = {"User-Agent": user_agent or default_user_agent()}
    all_headers.update(headers or {})
    all_headers.update(auth_headers or {})
    return httpx.Client(
        base_url=base_url,
        headers=all_headers,
        auth=httpx.BasicAuth(*basic_auth) if basic_auth else None,
        timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
        follow_redirects=False,
        event_hooks={"request": [_check_request]},
    )


# ---------------------------------------------------------------------------- answers


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def describe(request: httpx.Request) -> str:
    """``POST https://host/path`` — no query string (it may carry a token)."""
    return f"{request.method} {request.url.copy_with(query=None, fragment=None)}"


def body_excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (httpx.HTTPError, UnicodeDecodeError, LookupError):
        return ""
    text = " ".join(text.split())
    return text[:BODY_EXCERPT] + ("..." if len(text) > BODY_EXCERPT else "")


def default_classify(response: httpx.Response) -> DestinationError | None:
    """Status -> error. 2xx: None. 401: CredentialsRefused. 403 and other 4xx:
    TerminalError. 408, 425, 5xx (but 501): TransientError. 429, and 503 with
    Retry-After: ThrottledError with the Retry-After seconds."""
    status = response.status_code
    if status < 300:
        return None
    said = body_excerpt(response)
    what = f"{describe(response.request)} answered {status} {response.reason_phrase}"
    what += f": {said}" if said else ""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429 or (status == 503 and retry_after is not None):
        return ThrottledError(f"rate limited: {what}", retry_after=retry_after)
    if status == 401:
        return CredentialsRefused(
            f"credentials refused: {what}. Check the integration's credentials "
            "(the token may be expired or revoked)"
        )
    if status == 403:
        return TerminalError(
            f"permission denied: {what}. Grant the credentials access to this account"
        )
    if status in (408, 425) or (status >= 500 and status != 501):
        return TransientError(what)
    if 300 <= status < 400:
        return TerminalError(f"unexpected redirect: {what}; check the integration's endpoint")
    return TerminalError(what)


# ---------------------------------------------------------------------------- send


def _redacted(err: BaseException, redactor: Redactor) -> BaseException:
    """``err`` with every string argument (its message) passed through ``redactor`` and the
    process redactor."""

    def clean(text: str) -> str:
        text = redactor(text)
        return text if redactor is PROCESS_REDACTOR else PROCESS_REDACTOR(text)

    err.args = tuple(clean(a) if isinstance(a, str) else a for a in err.args)
    return err


def _transport_error(request: httpx.Request, exc: httpx.TransportError) -> DestinationError:
    kind = type(exc).__name__
    detail = f"{describe(request)} failed ({kind}: {exc})"
    if isinstance(exc, httpx.TimeoutException):
        why = f": {exc}" if isinstance(exc, AnswerTooSlow) else ""
        err = TransientError(f"{describe(request)} timed out ({kind}{why})")
        # sent, and no answer: the destination may have applied it (not so when the
        # connection was never made)
        err.unanswered = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return err
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        err = TransientError(detail)
        err.unanswered = not isinstance(exc, httpx.ConnectError)
        return err
    return TerminalError(detail)  # unsupported protocol, proxy error, malformed request


def _send_once(
    client: httpx.Client,
    request: httpx.Request,
    classify: Classifier,
    pacer: Pacer | None,
    redactor: Redactor,
) -> httpx.Response:
    started = time.monotonic()
    try:
        if pacer is None:
            response = _send_whole(client, request)
        else:
            with pacer.slot():
                response = _send_whole(client, request)
    except httpx.TransportError as exc:
        err = _redacted(_transport_error(request, exc), redactor)
        log.debug("%s", err)
        raise err from None  # the httpx exception may carry the full URL
    if pacer is not None:
        pacer.observe(response)
    elapsed = time.monotonic() - started
    log.debug("%s -> %s (%.2fs)", redactor(describe(request)), response.status_code, elapsed)
    try:
        error = classify(response)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # a vendor classifier tripped on an unexpected body (HTML error page, bad JSON):
        # the status code still says what happened
        log.debug("classifier failed (%s); using the status code", type(exc).__name__)
        error = default_classify(response)
    if error is not None:
        raise _redacted(error, redactor) from None
    return response


class AnswerTooSlow(httpx.ReadTimeout):
    """The answer's body kept coming, each piece within the read timeout, for longer than
    the read timeout in all (a receiver or proxy trickling it)."""


def _send_whole(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """``client.send`` whose answer body must arrive within the read timeout *in all*:
    httpx's read timeout bounds each wait for the socket, so a body trickled a byte at a
    time would hold the call (and the state lock) for as long as the sender liked, past the
    retry budget too. Raises :class:`AnswerTooSlow` (a read timeout: sent, no answer)."""
    response = client.send(request, stream=True)
    try:
        response.content  # noqa: B018 (read already: an in-memory transport)
    except httpx.ResponseNotRead:
        pass
    else:
        return response
    try:
        timeouts = request.extensions.get("timeout") or {}
        limit = timeouts.get("read", client.timeout.read)
        deadline = time.monotonic() + limit if limit else None
        raw = []
        for chunk in response.iter_raw():
            raw.append(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise AnswerTooSlow(
                    f"the answer's body took longer than {limit:g}s to arrive", request=request
                )
    finally:
        response.close()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(raw),
        request=request,
        extensions=response.extensions,
    )


def send(
    client: httpx.Client,
    request: httpx.Request,
    *,
    classify: Classifier = default_classify,
    pacer: Pacer | None = None,
    policy: RetryPolicy | None = None,
    redactor: Redactor | None = None,
) -> httpx.Response:
    """Send ``request`` and return the response, or raise the typed error ``classify``
    (default :func:`default_classify`) found in it. With a ``policy``, retried by it —
    only for calls the engine does not already wrap (e.g. polling a job)."""
    redactor = redactor or PROCESS_REDACTOR
    if policy is None:
        return _send_once(client, request, classify, pacer, redactor)
    return policy.call(_send_once, client, request, classify, pacer, redactor)
