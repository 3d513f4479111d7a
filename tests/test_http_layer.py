"""The shared HTTP layer: client factory, classification, redaction, pacing.

Classification and redaction go through ``httpx.MockTransport``; timeouts, refused and
dropped connections through a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import httpx
import pytest
from pydantic import SecretStr

from destinations.http import (
    HttpOptions,
    check_url,
    default_classify,
    make_client,
    parse_retry_after,
    send,
)
from destinations.pacing import Pacer, Usage, meta_business_use_case_usage, ratelimit_headers
from destinations.redaction import Credentials, RedactingFilter, Redactor
from destinations.retry import RetryInterrupted, RetryPolicy
from reconciler.errors import (
    ConfigError,
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

TOKEN = "EAAB-tok3n-SECRET-9f8e7d"


def mock_client(handler, **kw) -> httpx.Client:
    return make_client("https://api.example.test/v1", transport=httpx.MockTransport(handler), **kw)


def answer(status: int, body=None, headers=None):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def get(client: httpx.Client, path: str = "/things", **kw) -> httpx.Response:
    return send(client, client.build_request("GET", path), **kw)


# ---------------------------------------------------------------------------- classification


def test_success_returns_the_response():
    with mock_client(answer(200, {"data": [1]})) as client:
        assert get(client).json() == {"data": [1]}


@pytest.mark.parametrize(
    ("status", "error", "not_error"),
    [
        (401, CredentialsRefused, None),
        (403, TerminalError, CredentialsRefused),
        (400, TerminalError, CredentialsRefused),
        (404, TerminalError, None),
        (410, TerminalError, None),
        (301, TerminalError, None),
        (408, TransientError, ThrottledError),
        (425, TransientError, ThrottledError),
        (500, TransientError, ThrottledError),
        (502, TransientError, ThrottledError),
        (503, TransientError, ThrottledError),
        (501, TerminalError, None),
        (429, ThrottledError, None),
    ],
)
def test_default_classification(status, error, not_error):
    with mock_client(answer(status, {"error": "x"})) as client, pytest.raises(error) as raised:
        get(client)
    if not_error is not None:
        assert not isinstance(raised.value, not_error)
    assert str(status) in str(raised.value)


def throttle_of(status: int, headers: dict) -> ThrottledError:
    with mock_client(answer(status, headers=headers)) as client:
        try:
            get(client)
        except ThrottledError as exc:
            return exc
    pytest.fail(f"{status} {headers} was not classified as throttling")


def test_429_carries_retry_after_seconds():
    assert throttle_of(429, {"Retry-After": "60"}).retry_after == 60


def test_429_with_http_date_retry_after():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < throttle_of(429, {"Retry-After": when}).retry_after <= 120


def test_429_without_retry_after_and_503_with_it():
    assert throttle_of(429, {}).retry_after is None
    assert throttle_of(503, {"Retry-After": "7"}).retry_after == 7


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("-3", 0.0), ("soon", None), ("", None)],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_dates():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now=now) == 90
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0


def tiktok_classify(response: httpx.Response) -> DestinationError | None:
    """What a vendor classifier looks like: errors inside HTTP 200, then the default."""
    if response.status_code == 200:
        code = response.json().get("code", 0)
        if code == 40100:
            return ThrottledError(f"TikTok rate limit: {response.json()['message']}")
        if code in (40001, 40002, 40105):
            return CredentialsRefused(f"TikTok refused the access token (code {code})")
        if code:
            return TerminalError(f"TikTok error {code}")
        return None
    return default_classify(response)


def test_vendor_classifier_finds_errors_in_a_200_body():
    body = {"code": 40100, "message": "Too many requests", "data": {}}
    with mock_client(answer(200, body)) as client, pytest.raises(ThrottledError):
        get(client, classify=tiktok_classify)
    with mock_client(answer(200, {"code": 40105})) as client, pytest.raises(CredentialsRefused):
        get(client, classify=tiktok_classify)
    with mock_client(answer(200, {"code": 0, "data": {"ok": 1}})) as client:
        assert get(client, classify=tiktok_classify).json()["data"] == {"ok": 1}
    with mock_client(answer(502)) as client, pytest.raises(TransientError):
        get(client, classify=tiktok_classify)


def test_a_classifier_tripping_on_an_unexpected_body_falls_back_to_the_status():
    def html_page(request):
        return httpx.Response(502, text="<html>Bad gateway</html>")

    def reads_json_always(response):
        return TerminalError(response.json()["error"]["message"])

    with mock_client(html_page) as client, pytest.raises(TransientError, match="502"):
        get(client, classify=reads_json_always)


# ---------------------------------------------------------------------------- client factory


def test_client_sends_user_agent_auth_headers_and_plain_headers():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(204)

    with mock_client(
        handler, auth_headers={"Authorization": f"Bearer {TOKEN}"}, headers={"revision": "2025"}
    ) as client:
        get(client)
    h = seen[0].headers
    assert h["user-agent"] == f"activation-reconciler/{version('activation-reconciler')}"
    assert h["authorization"] == f"Bearer {TOKEN}" and h["revision"] == "2025"


def test_client_basic_auth_timeouts_and_limits():
    seen = []
    with mock_client(
        lambda r: seen.append(r) or httpx.Response(200),
        basic_auth=("anystring", "mc-key-1234-us19"),
        timeout=HttpOptions(timeout_seconds=12, connect_timeout_seconds=3).timeout(),
    ) as client:
        get(client)
        t = client.timeout
        assert (t.connect, t.read, t.write, t.pool) == (3, 12, 12, 12)
    assert seen[0].headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/api", "http://127.9.9.9", "http://[::1]:9000", "http://localhost:1"],
)
def test_plain_http_is_allowed_to_loopback(url):
    make_client(url).close()


@pytest.mark.parametrize(
    "url", ["http://graph.facebook.com/v24", "http://10.0.0.5/api", "ftp://example.com"]
)
def test_plain_http_elsewhere_is_a_config_error(url):
    with pytest.raises(ConfigError, match="https://"):
        make_client(url)


def test_an_absolute_plain_http_url_is_refused_even_on_an_https_client():
    with mock_client(answer(200)) as client, pytest.raises(ConfigError, match="https"):
        send(client, client.build_request("GET", "http://evil.example.com/next?access_token=x"))


# ---------------------------------------------------------------------------- redaction


def test_errors_never_show_tokens_query_secrets_or_emails(caplog):
    body = {"error": {"message": f"bad token {TOKEN} for jane.doe@example.com", "code": 190}}
    caplog.set_level(logging.DEBUG)
    with mock_client(answer(401, body), auth_headers={"Authorization": f"OAuth {TOKEN}"}) as c:
        request = c.build_request("GET", "/me", params={"access_token": "Q-param-secret-77"})
        with pytest.raises(CredentialsRefused) as raised:
            send(c, request)
    text = str(raised.value) + repr(raised.value) + caplog.text
    for secret in (TOKEN, "Q-param-secret-77", "jane.doe@example.com"):
        assert secret not in text
    assert "GET https://api.example.test/v1/me" in str(raised.value)
    assert "HTTP Request" in caplog.text  # httpx's own log line was kept, redacted


def test_transport_errors_are_redacted_and_drop_the_httpx_cause():
    def handler(request):
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    with mock_client(handler) as client:
        request = client.build_request("GET", "/x", params={"access_token": TOKEN})
        with pytest.raises(TransientError) as raised:
            send(client, request)
    assert TOKEN not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_redactor_masks_secret_forms():
    r = Redactor([TOKEN, "p@ss word/1", None, "ab"])
    text = r(
        f"Authorization: Bearer {TOKEN}\n?access_token=zzz&x=1 "
        "pw=p%40ss%20word%2F1 https://user:hunter22@host/x "
        '{"api_key": "k-1"} Klaviyo-API-Key pk_abcdef123456'
    )
    for leaked in (TOKEN, "zzz", "p%40ss%20word%2F1", "hunter22", "k-1", "pk_abcdef123456"):
        assert leaked not in text
    assert "x=1" in text and "ab" in r("ab")  # short strings are not treated as secrets


def test_logging_filter_redacts_args_and_tracebacks(caplog):
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter(Redactor([TOKEN])))
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            try:
                raise ValueError(f"boom {TOKEN}")
            except ValueError:
                logger.exception("calling with %s", TOKEN)
    finally:
        logger.filters.clear()
    assert "calling with ***" in caplog.text and "boom ***" in caplog.text
    assert TOKEN not in caplog.text


class MetaCredentials(Credentials):
    access_token: SecretStr
    app_secret: SecretStr | None = None


def test_credentials_never_print_their_secrets():
    creds = MetaCredentials.from_mapping({"access_token": TOKEN, "app_secret": "app-s3cret"})
    shown = str(creds) + repr(creds) + creds.model_dump_json() + str(creds.model_dump())
    assert TOKEN not in shown and "app-s3cret" not in shown
    assert creds.access_token.get_secret_value() == TOKEN
    assert set(creds.secret_values()) == {TOKEN, "app-s3cret"}


def test_bad_credentials_name_the_key_but_never_the_value():
    with pytest.raises(ConfigError) as raised:
        MetaCredentials.from_mapping({"acess_token": TOKEN}, integration="meta-prod")
    message = str(raised.value)
    assert "meta-prod" in message and "access_token: missing" in message
    assert "acess_token: not a credential" in message and TOKEN not in message


# ---------------------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_pacer_spaces_requests_at_the_declared_rate():
    clock = FakeClock()
    pacer = Pacer(requests_per_minute=120, clock=clock, sleep=clock.sleep)
    for _ in range(11):
        pacer.wait_turn()
    assert clock.now == pytest.approx(5.0)  # 10 gaps of 0.5 s


def test_pacer_reserves_turns_across_threads():
    clock = FakeClock()
    waits = []
    pacer = Pacer(requests_per_minute=60, clock=clock, sleep=lambda s: None)
    threads = [threading.Thread(target=lambda: waits.append(pacer.wait_turn())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == [float(i) for i in range(8)]  # each thread its own slot


def test_pacer_caps_requests_in_flight():
    pacer = Pacer(max_concurrency=2)
    entered = threading.Event()

    def third():
        with pacer.slot():
            entered.set()

    with pacer.slot():
        with pacer.slot():
            worker = threading.Thread(target=third)
            worker.start()
            assert not entered.wait(0.1)
        assert entered.wait(5)
    worker.join()


def test_without_a_declared_rate_high_usage_slows_down_from_the_recent_pace():
    """With no ``requests_per_minute`` (Meta's default) a usage of 95 % changed nothing:
    17 calls went out in half a second until Meta throttled. From 50 % the pace of the
    recent requests is taken as the rate and slowed down like a declared one."""
    clock = FakeClock()
    pacer = Pacer(usage=meta_business_use_case_usage, clock=clock, sleep=clock.sleep)
    for _ in range(10):  # ten requests in one second, nothing paces them
        pacer.wait_turn()
        clock.now += 0.1
    assert clock.now == pytest.approx(1.0)
    usage = {"123": [{"type": "ads_management", "call_count": 95}]}
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}))
    assert pacer.factor == pytest.approx(0.1)
    start = clock.now
    for _ in range(3):
        pacer.wait_turn()
    # 10 requests/s seen, at 10 % of it: one a second (the first used the bucket's token)
    assert clock.now - start == pytest.approx(2.0)
    usage["123"][0]["call_count"] = 10  # back under 50 %: no rate at all again
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}))
    start = clock.now
    for _ in range(5):
        pacer.wait_turn()
    assert clock.now == start


def test_meta_usage_header_slows_down_and_pauses():
    clock = FakeClock()
    pacer = Pacer(
        requests_per_minute=60, usage=meta_business_use_case_usage, clock=clock, sleep=clock.sleep
    )
    usage = {"123": [{"type": "ads_management", "call_count": 80, "total_time": 20}]}
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}))
    assert pacer.factor == pytest.approx(0.4)
    usage["123"][0].update(call_count=100, estimated_time_to_regain_access=2)
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}))
    # a pause of minutes is not slept inside the request: the retry policy waits it out,
    # within the integration's budget and stopping on a signal
    with pytest.raises(ThrottledError) as paused:
        pacer.wait_turn()
    assert paused.value.retry_after == pytest.approx(120)
    clock.now += 119.5  # what is left is slept before the request
    assert pacer.wait_turn() >= 0.5
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": "{not json"}))
    assert meta_business_use_case_usage(httpx.Response(200)) is None


def test_ratelimit_headers():
    h = {"RateLimit-Limit": "150", "RateLimit-Remaining": "0", "RateLimit-Reset": "30"}
    assert ratelimit_headers(httpx.Response(200, headers=h)) == Usage(used=1.0, regain_after=30)
    h["RateLimit-Remaining"] = "120"
    assert ratelimit_headers(httpx.Response(200, headers=h)).used == pytest.approx(0.2)
    assert ratelimit_headers(httpx.Response(200)) is None


def test_send_lets_the_pacer_observe_usage():
    headers = {"X-Business-Use-Case-Usage": json.dumps({"1": [{"call_count": 95}]})}
    pacer = Pacer(requests_per_minute=600, usage=meta_business_use_case_usage)
    with mock_client(answer(200, {}, headers)) as client:
        get(client, pacer=pacer)
    assert pacer.factor < 0.2


def test_http_options_build_policy_and_refuse_unknown_keys():
    opts = HttpOptions(retry_budget_minutes=30)
    assert opts.retry_policy(max_failures=3).budget_minutes == 30
    with pytest.raises(ValueError):
        HttpOptions.model_validate({"retry_budget_minute": 5})


# ---------------------------------------------------------------------------- a real server


class Server:
    """An HTTP server on 127.0.0.1 whose answers follow ``script``: ``(status, headers)``,
    ``"hang"`` (wait until released), ``"drop"`` (close without answering) or ``"drip"``
    (200 at once, then a 40-byte body a byte every 0.1 s)."""

    def __init__(self):
        self.script: list = []
        self.seen: list[dict] = []
        self.release = threading.Event()
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(dict(self.headers))
                outer.arrived.set()
                step = outer.script.pop(0) if outer.script else (200, {})
                if step == "hang":
                    outer.release.wait(10)
                    return
                if step == "drop":
                    self.close_connection = True
                    return
                if step == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "40")
                    self.end_headers()
                    for _ in range(40):
                        if outer.release.wait(0.1):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                status, headers = step
                self.send_response(status)
                for k, v in {**headers, "Content-Length": "2"}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.mark.parametrize(
    ("script", "read", "said"),
    [
        ("hang", 0.2, ""),
        # each byte came within the read timeout (httpx's is per socket read), so a receiver
        # sending its body a byte at a time held the call for as long as it liked
        ("drip", 0.5, "longer than 0.5s"),
    ],
)
def test_read_timeout_is_transient(server, script, read, said):
    server.script = [script]
    timeout = httpx.Timeout(5, read=read)
    with (
        make_client(server.url, timeout=timeout) as client,
        pytest.raises(TransientError, match="timed out") as caught,
    ):
        get(client)
    assert caught.value.unanswered  # sent: the server may have applied it
    assert said in str(caught.value)


def test_dropped_connection_is_transient(server):
    server.script = ["drop"]
    with make_client(server.url) as client, pytest.raises(TransientError) as caught:
        get(client)
    assert caught.value.unanswered


def test_refused_connection_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        make_client(f"http://127.0.0.1:{port}") as client,
        pytest.raises(TransientError, match="ConnectError") as caught,
    ):
        get(client)
    assert not caught.value.unanswered  # never sent: nothing can have been applied


def test_pool_limit_waits_then_times_out(server):
    server.script = ["hang"]
    timeout = httpx.Timeout(5, pool=0.2)
    with make_client(server.url, max_connections=1, timeout=timeout) as client:
        first = threading.Thread(target=lambda: pytest.raises(TransientError, get, client))
        first.start()
        try:
            assert server.arrived.wait(5)  # the first request holds the only connection
            with pytest.raises(TransientError, match="PoolTimeout"):
                get(client)
        finally:
            server.release.set()
            first.join()


def test_send_with_policy_recovers_against_a_real_server(server):
    server.script = [(503, {}), (429, {"Retry-After": "2"}), (200, {})]
    slept = []
    policy = RetryPolicy(sleep=slept.append, rng=random.Random(1))
    with make_client(server.url) as client:
        assert get(client, policy=policy).status_code == 200
    assert len(server.seen) == 3
    assert all(h["User-Agent"].startswith("activation-reconciler/") for h in server.seen)
    assert sum(slept) >= 2  # the Retry-After floor, plus the 503 backoff


def test_a_long_usage_pause_is_waited_by_the_retry_policy_within_its_budget(server):
    """Meta said access comes back in 30 minutes: the request is not sent, and the wait is
    the retry policy's — past a 6-second budget it gives up at once, and a stop request
    (Ctrl-C, SIGTERM) ends it — instead of a 30-minute sleep inside the request."""
    usage = {"1": [{"call_count": 100, "estimated_time_to_regain_access": 30}]}
    pacer = Pacer(usage=meta_business_use_case_usage)
    pacer.observe(httpx.Response(200, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}))
    slept: list[float] = []
    tight = RetryPolicy(budget_minutes=0.1, sleep=slept.append, rng=random.Random(1))
    with make_client(server.url) as client:
        with pytest.raises(ThrottledError, match="asks to wait 1800s"):
            send(client, client.build_request("GET", "/x"), pacer=pacer, policy=tight)
        assert slept == [] and server.seen == []
        stop = RetryPolicy(
            budget_minutes=60, sleep=slept.append, interrupt=lambda: bool(slept), tick=1.0
        )
        with pytest.raises(RetryInterrupted):
            send(client, client.build_request("GET", "/x"), pacer=pacer, policy=stop)
    assert slept == [1.0] and server.seen == []  # one tick of the wait, then the stop


@pytest.mark.parametrize(
    "url",
    [
        "https://graph.facebook.com",
        "https://hooks.example.com:8443/x?y=1",
        "https://[::1]/x",
        "http://127.0.0.1:8081/hooks",
        "http://[::1]:80/a",
        "http://LOCALHOST/x",
        "http://localhost./x",
        "https://",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0/x",
        "http://foo.localhost/x",
        "http://example.com/x",
        "ftp://example.com/x",
    ],
)
def test_the_schema_and_validate_agree_on_an_endpoint(url):
    """An editor (``reconcile schema``) refuses exactly the endpoints validate refuses: the
    schema took ``http://foo.localhost`` and validate took ``https://`` with no host."""
    from reconciler.workspace.schema_rules import URL_PATTERN

    try:
        check_url(url)
        accepted = True
    except (ConfigError, httpx.InvalidURL):
        accepted = False
    assert bool(re.match(URL_PATTERN, url)) is accepted
