"""The ``webhook`` destination: payloads and signatures (MockTransport), the adapter against
the fake receiver (real HTTP on 127.0.0.1), and ``reconcile apply`` end to end on
``examples/webhook``.

The v2 conformance base classes (``tests/destination_conformance.py``: ``AdapterConformance``
and ``EngineConformance``) are being rewritten; :class:`TestWebhookAdapter` and
:class:`TestWebhookEngine` already provide their hooks (``destination`` fixture and
``stored_records``; ``integration_yaml``, ``fake`` fixture and ``held``) and are meant to
subclass them once they land.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import httpx
import jsonschema
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from destinations import registry
from destinations.base import (
    AudienceRef,
    CallContext,
    DestinationContext,
    MemberBatch,
    RemovalBatch,
)
from destinations.identity import HASHED, RAW, NormaliseContext, encode, records
from destinations.retry import RetryEvent, RetryPolicy
from destinations.webhook import WebhookConfig, WebhookCredentials, WebhookDestination
from destinations.webhook.adapter import audience_id
from destinations.webhook.client import WebhookClient, classify
from destinations.webhook.payload import EVENT_SCHEMA, json_value
from reconciler.apply import audience_steps
from reconciler.errors import (
    ConfigError,
    CredentialsRefused,
    TerminalError,
    ThrottledError,
    TransientError,
)
from tests.conftest import WS, allow_ephemeral_state, cli
from tests.fakes.webhook import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "webhook"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make(
    root: Path,
    *,
    client: httpx.Client | None = None,
    url: str = "https://hooks.example.com/audiences",
    secret: str | None = SECRET,
    **config: Any,
) -> WebhookDestination:
    context = DestinationContext(root=root, default_phone_country="AU", integration="hooks")
    creds = (
        WebhookCredentials(secret=secret)
        if secret is not None
        else WebhookCredentials.model_construct()
    )
    return WebhookDestination(WebhookConfig(url=url, **config), creds, context, client)


def batch(
    dest: WebhookDestination, members: Sequence[dict[str, Any]], **attributes: Sequence[Any]
) -> MemberBatch:
    """A MemberBatch as the engine builds it: value columns per encoding, records per member."""
    context = NormaliseContext("AU")
    encoded = [encode(m, dest.identity.accepted, dest.identity.rules, context) for m in members]
    fields = [e.field for e in dest.identity.encodings]
    values = {
        f: [next((e.value for e in enc if e.encoding.field == f), None) for enc in encoded]
        for f in fields
    }
    return MemberBatch(
        keys=[m["key"] for m in members],
        values=values,
        records=[tuple(e.record for e in enc) for enc in encoded],
        attributes=attributes,
    )


def person(i: int) -> dict[str, Any]:
    return {"key": f"p{i}", "email": f" User{i}@Example.com ", "phone": f"0412 345 {i:03d}"}


class Recorder:
    """A MockTransport handler that answers ``status`` and keeps every request."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, headers=self.headers, json={})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def event(self, i: int = -1) -> dict[str, Any]:
        """The i-th request's body, after verifying its signature as a receiver would."""
        request = self.requests[i]
        return Webhook(SECRET).verify(request.content, dict(request.headers))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# -- configuration ---------------------------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    assert registry.load("webhook") is WebhookDestination


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "http://hooks.example.com/x"},  # plain http off loopback
        {"url": "ftp://hooks.example.com/x"},
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"identifiers": ["shoe_size"]},
        {"identifiers": ["email", "email"]},
        {"identifiers": []},
        {"pii": "plain"},
        {"unknown": 1},
    ],
)
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebhookConfig(**bad)


def test_defaults() -> None:
    config = WebhookConfig(url="http://127.0.0.1:9/x")
    assert (config.identifiers, config.pii, config.batch_size) == (
        ["email", "phone"],
        "hashed",
        500,
    )


@pytest.mark.parametrize(
    "secret",
    ["0123456789abcdef0123456789abcdef", "whsec_not base64!", "whsec_" + "QUJD", "whsec_"],
)
def test_bad_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WebhookCredentials.from_mapping({"secret": secret}, integration="hooks")
    assert "secret" in str(caught.value)
    assert secret not in str(caught.value)


def test_the_secret_never_prints(tmp_path: Path) -> None:
    creds = WebhookCredentials(secret=SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert SECRET not in creds.model_dump_json()


def test_a_receiver_is_required(tmp_path: Path) -> None:
    context = DestinationContext(root=tmp_path)
    with pytest.raises(ConfigError, match="config.url"):
        WebhookDestination(WebhookConfig(), WebhookCredentials(secret=SECRET), context, None)


def test_the_endpoint_overrides_the_url(tmp_path: Path, recorder: Recorder) -> None:
    context = DestinationContext(root=tmp_path, endpoint="http://127.0.0.1:9/proxy")
    dest = WebhookDestination(
        WebhookConfig(url="https://hooks.example.com/x"),
        WebhookCredentials(secret=SECRET),
        context,
        recorder.client(),
    )
    dest.create_audience("A", idempotency_key="k")
    assert str(recorder.requests[0].url) == "http://127.0.0.1:9/proxy"


def test_identity_follows_pii(tmp_path: Path) -> None:
    assert make(tmp_path).identity.rules is HASHED
    raw = make(tmp_path, pii="raw", identifiers=["email", "madid"])
    assert raw.identity.rules is RAW and raw.identity.accepted == ("email", "madid")
    assert [e.field for e in make(tmp_path).identity.encodings] == ["email_sha256", "phone_sha256"]


# -- payloads and signatures (MockTransport) ----------------------------------------------------


def test_add_posts_one_signed_event_with_hashed_identifiers(
    tmp_path: Path, recorder: Recorder
) -> None:
    dest = make(tmp_path, client=recorder.client())
    ref = AudienceRef("aud_1", "VIP")
    b = batch(
        dest,
        [person(1), {"key": "p2", "email": "b@example.com", "phone": None}],
        TIER=["gold", None],
    )
    outcome = dest.add(ref, b, CallContext(batch_id="batch-1"))
    assert not outcome.rejected and not outcome.retry
    (request,) = recorder.requests
    assert request.method == "POST" and str(request.url) == "https://hooks.example.com/audiences"
    assert request.headers["webhook-id"] == "batch-1"
    assert request.headers["content-type"] == "application/json"
    event = recorder.event()
    jsonschema.validate(event, EVENT_SCHEMA)
    assert event == {
        "version": 1,
        "type": "audience.members_entered",
        "batch_id": "batch-1",
        "audience": {"id": "aud_1", "name": "VIP"},
        "pii": "hashed",
        "members": [
            {
                "key": "p1",
                "identifiers": {
                    "email_sha256": sha("user1@example.com"),
                    "phone_sha256": sha("+61412345001"),
                },
                "attributes": {"TIER": "gold"},
            },
            {
                "key": "p2",
                "identifiers": {"email_sha256": sha("b@example.com")},
                "attributes": {"TIER": None},
            },
        ],
    }
    # what the engine records is exactly what was sent
    assert b.records[0] == (
        "email_sha256:" + sha("user1@example.com"),
        "phone_sha256:" + sha("+61412345001"),
    )


def test_a_retry_resends_the_same_id_and_body_with_a_valid_signature(
    tmp_path: Path, recorder: Recorder
) -> None:
    moments = iter(
        [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, 0, 0, 7, tzinfo=dt.UTC)]
    )
    url = "https://hooks.example.com/audiences"
    client = WebhookClient(recorder.client(), url, lambda: SECRET, clock=lambda: next(moments))
    dest = make(tmp_path, client=recorder.client())
    dest.client = client
    b, call = batch(dest, [person(1)]), CallContext(batch_id="same")
    dest.add(AudienceRef("a", "A"), b, call)
    dest.add(AudienceRef("a", "A"), b, call)
    first, second = recorder.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "same"
    assert first.content == second.content
    assert first.headers["webhook-timestamp"] == "1767225600"
    assert second.headers["webhook-timestamp"] == "1767225607"
    signer = Webhook(SECRET)
    for r in (first, second):
        stamp = dt.datetime.fromtimestamp(int(r.headers["webhook-timestamp"]), dt.UTC)
        assert r.headers["webhook-signature"] == signer.sign("same", stamp, r.content.decode())


def test_a_signature_made_with_another_secret_does_not_verify(
    tmp_path: Path, recorder: Recorder
) -> None:
    dest = make(tmp_path, client=recorder.client(), secret=OTHER_SECRET)
    dest.add(AudienceRef("a", "A"), batch(dest, [person(1)]), CallContext(batch_id="x"))
    with pytest.raises(Exception, match="No matching signature"):
        recorder.event()


def test_raw_pii_sends_normalised_values_and_still_records_hashes(
    tmp_path: Path, recorder: Recorder
) -> None:
    dest = make(tmp_path, client=recorder.client(), pii="raw")
    b = batch(dest, [person(3)])
    dest.add(AudienceRef("a", "A"), b, CallContext(batch_id="raw"))
    event = recorder.event()
    assert event["pii"] == "raw"
    assert event["members"][0]["identifiers"] == {
        "email": "user3@example.com",
        "phone": "+61412345003",
    }
    assert b.records[0] == (
        "email_sha256:" + sha("user3@example.com"),
        "phone_sha256:" + sha("+61412345003"),
    )


def test_removal_and_update_events(tmp_path: Path, recorder: Recorder) -> None:
    dest = make(tmp_path, client=recorder.client(), send_keys=False)
    ref = AudienceRef("a", "A")
    rec = ("email_sha256:" + sha("x@example.com"), "phone_sha256:" + sha("+61412345000"))
    dest.remove(ref, RemovalBatch(["p1"], [rec]), CallContext(batch_id="rm"))
    dest.update(ref, batch(dest, [person(4)], TIER=["silver"]), CallContext(batch_id="up"))
    left, changed = recorder.event(0), recorder.event(1)
    for event in (left, changed):
        jsonschema.validate(event, EVENT_SCHEMA)
    assert left["type"] == "audience.members_left"
    assert left["members"] == [
        {"identifiers": {"email_sha256": sha("x@example.com"), "phone_sha256": sha("+61412345000")}}
    ]
    assert changed["type"] == "audience.members_changed"
    assert changed["members"][0]["attributes"] == {"TIER": "silver"}
    assert "key" not in changed["members"][0]


def test_a_member_recorded_with_two_e_mails_leaves_once_per_e_mail(
    tmp_path: Path, recorder: Recorder
) -> None:
    """The old and the new e-mail of an update whose answer was lost are both recorded: the
    receiver gets the member once per e-mail, so one matching by identifier drops both."""
    dest = make(tmp_path, client=recorder.client())
    old, new = "email_sha256:" + sha("old@example.com"), "email_sha256:" + sha("new@example.com")
    phone = "phone_sha256:" + sha("+61412345000")
    dest.remove(AudienceRef("a", "A"), RemovalBatch(["p1"], [(old, phone, new)]), CallContext("rm"))
    left = recorder.event(0)
    jsonschema.validate(left, EVENT_SCHEMA)
    first = {"email_sha256": sha("old@example.com"), "phone_sha256": sha("+61412345000")}
    assert left["members"] == [
        {"key": "p1", "identifiers": first},
        {"key": "p1", "identifiers": {"email_sha256": sha("new@example.com")}},
    ]


def test_a_batch_without_value_columns_sends_its_recorded_hashes(
    tmp_path: Path, recorder: Recorder
) -> None:
    dest = make(tmp_path, client=recorder.client())
    rec = ("email_sha256:" + sha("x@example.com"),)
    dest.add(AudienceRef("a", "A"), MemberBatch(["p1"], {}, [rec]), CallContext(batch_id="s"))
    assert recorder.event()["members"][0]["identifiers"] == {"email_sha256": sha("x@example.com")}


def test_attribute_values_become_json() -> None:
    assert json_value(dt.date(2026, 1, 2)) == "2026-01-02"
    assert json_value(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05"
    assert json_value(decimal.Decimal("1234.50")) == "1234.50"
    # fixed-point, never Python's exponent form; non-finite values by name, not NULL's null
    assert json_value(decimal.Decimal("1E-10")) == "0.0000000001"
    assert json_value(decimal.Decimal("0E-10")) == "0.0000000000"
    assert [json_value(float(v)) for v in ("nan", "inf", "-inf")] == [
        "NaN",
        "Infinity",
        "-Infinity",
    ]
    assert json_value([1, (2.5, True)]) == [1, [2.5, True]]
    assert json_value({"a": decimal.Decimal("1")}) == {"a": "1"}


def test_columns_python_cannot_hold_still_become_json():
    """A nanosecond timestamp keeps its digits as text; an infinite one (beyond Python's
    dates) is null: neither may crash the apply."""
    from destinations.columns import LazyColumn

    table = (
        duckdb.sql(
            "SELECT '2024-01-01 10:00:00.123456789'::TIMESTAMP_NS AS ns, "
            "'infinity'::TIMESTAMPTZ AS inf, DATE '2024-01-02' AS d FROM range(2)"
        )
        .arrow()
        .read_all()
    )
    ns, inf, d = (LazyColumn(c) for c in table.columns)
    assert [json_value(v) for v in ns] == ["2024-01-01 10:00:00.123456789"] * 2
    assert [json_value(v) for v in inf] == [None, None]
    assert [json_value(v) for v in d] == ["2024-01-02"] * 2


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (200, {}, None, None),
        (202, {}, None, None),
        (204, {}, None, None),
        (410, {}, TerminalError, None),
        (401, {}, CredentialsRefused, None),
        (403, {}, CredentialsRefused, None),
        (429, {"retry-after": "7"}, ThrottledError, 7.0),
        (429, {}, ThrottledError, None),
        (503, {"retry-after": "2"}, ThrottledError, 2.0),
        (500, {}, TransientError, None),
        (502, {}, TransientError, None),
        (408, {}, TransientError, None),
        (400, {}, TerminalError, None),
        (404, {}, TerminalError, None),
        (301, {"location": "https://elsewhere.example.com"}, TerminalError, None),
    ],
)
def test_answers_are_classified(status, headers, error, retry_after) -> None:
    request = httpx.Request("POST", "https://hooks.example.com/x?token=abc")
    found = classify(httpx.Response(status, headers=headers, request=request))
    if error is None:
        assert found is None
        return
    assert type(found) is error
    assert "token=abc" not in str(found)
    if error is ThrottledError:
        assert found.retry_after == retry_after
    if status == 410:
        assert "asked to stop" in str(found)
    if status in (401, 403):
        assert "secret" in str(found)


def test_errors_are_raised_typed_and_redacted(tmp_path: Path) -> None:
    recorder = Recorder(410)
    dest = make(tmp_path, client=recorder.client())
    with pytest.raises(TerminalError, match="asked to stop") as caught:
        dest.add(AudienceRef("a", "A"), batch(dest, [person(1)]), CallContext(batch_id="b"))
    assert SECRET not in str(caught.value)


def test_sending_without_a_secret_is_a_clear_error(tmp_path: Path, recorder: Recorder) -> None:
    dest = make(tmp_path, client=recorder.client(), secret=None)
    assert dest.list_audiences() == []  # reads need no secret (a plan)
    with pytest.raises(ConfigError, match="signing secret"):
        dest.create_audience("A", idempotency_key="k")
    assert recorder.requests == []


# -- audiences and the registry -----------------------------------------------------------------


def test_audiences_are_created_by_event_and_remembered(tmp_path: Path, recorder: Recorder) -> None:
    dest = make(tmp_path, client=recorder.client())
    registry_file = tmp_path / ".reconcile" / "webhook-hooks.json"
    # reads (what `plan` does) find nothing and create nothing
    assert dest.list_audiences() == [] and dest.find_audience("VIP") is None
    assert dest.find_created_audience("VIP", idempotency_key="k1") is None
    assert not registry_file.exists() and recorder.requests == []

    ref = dest.create_audience("VIP", idempotency_key="k1")
    assert ref == AudienceRef(audience_id("k1"), "VIP")
    event = recorder.event()
    assert recorder.requests[0].headers["webhook-id"] == "k1"
    assert event == {
        "version": 1,
        "type": "audience.created",
        "batch_id": "k1",
        "audience": {"id": ref.id, "name": "VIP"},
        "pii": "hashed",
    }
    jsonschema.validate(event, EVENT_SCHEMA)
    saved = json.loads(registry_file.read_text())
    assert saved["version"] == 1
    assert [(a["id"], a["name"], a["creation_key"]) for a in saved["audiences"]] == [
        (ref.id, "VIP", "k1")
    ]
    assert [p.name for p in registry_file.parent.iterdir()] == [registry_file.name]  # no temp
    # found by id, by name, by its creation key; a key seen before returns it without a call
    assert dest.find_audience(ref.id) == ref == dest.find_audience("VIP")
    assert dest.read_audience(AudienceRef(ref.id, "old")) == ref
    assert dest.find_created_audience("VIP", idempotency_key="k1") == ref
    assert dest.find_created_audience("VIP", idempotency_key="k2") is None
    assert dest.create_audience("VIP", idempotency_key="k1") == ref and len(recorder.requests) == 1
    newer = dest.create_audience("VIP", idempotency_key="k2")
    assert newer.id != ref.id and dest.find_audience("VIP") == newer
    assert [a.id for a in dest.list_audiences()] == [ref.id, newer.id]


def test_a_creation_whose_answer_failed_is_not_remembered(tmp_path: Path) -> None:
    dest = make(tmp_path, client=Recorder(503).client())
    with pytest.raises(TransientError):
        dest.create_audience("VIP", idempotency_key="k1")
    assert dest.find_created_audience("VIP", idempotency_key="k1") is None
    assert dest.list_audiences() == []


def test_a_damaged_registry_is_named(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "reg.json"
    path.write_text("{not json")
    dest = make(tmp_path, client=recorder.client(), registry_path=str(path))
    with pytest.raises(ConfigError, match="reg.json is damaged"):
        dest.list_audiences()


def test_rename_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    dest = make(tmp_path, client=recorder.client())
    assert not dest.capabilities.rename
    with pytest.raises(TerminalError, match="cannot be renamed"):
        dest.rename_audience(AudienceRef("a", "A"), "B")


# -- the adapter against the fake receiver (real HTTP) -------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as fake:
        yield fake


def against(root: Path, fake: WebhookReceiver, **config: Any) -> WebhookDestination:
    """An adapter with its own HTTP client (``make_client``) pointed at the fake."""
    return make(root, url=fake.url, **config)


def fast_policy(waits: list[RetryEvent]) -> RetryPolicy:
    """Retries that never really sleep; ``waits`` receives each wait the policy decided."""
    return RetryPolicy(
        backoff_start=0.01, backoff_max=0.05, sleep=lambda s: None, on_event=waits.append
    )


class TestWebhookAdapter:
    """Protocol behaviour against the fake receiver. Provides the hooks of the coming
    ``AdapterConformance`` (a ``destination`` fixture and :meth:`stored_records`) and should
    subclass it once ``tests/destination_conformance.py`` has it."""

    @pytest.fixture
    def destination(self, tmp_path: Path, receiver: WebhookReceiver):
        self.fake = receiver
        dest = against(tmp_path, receiver)
        yield dest
        dest.close()

    def stored_records(self, destination: Any, audience: AudienceRef) -> set[str]:
        return self.fake.records(audience.id)

    def test_implements_the_protocol(self, destination: WebhookDestination) -> None:
        from destinations.base import Destination

        assert isinstance(destination, Destination)
        assert destination.type_name == "webhook" and destination.limits.members_per_call == 500

    def test_create_find_and_list(self, destination: WebhookDestination) -> None:
        audience = destination.create_audience("Spring VIPs", idempotency_key="c1")
        assert self.fake.held() == {"Spring VIPs": set()}
        assert destination.find_audience(audience.id) == audience
        assert destination.find_audience("Spring VIPs") == audience
        assert destination.find_audience("spring vips") is None
        assert [a.name for a in destination.list_audiences()] == ["Spring VIPs"]

    def test_create_is_idempotent_per_key(self, destination: WebhookDestination) -> None:
        first = destination.create_audience("Once", idempotency_key="k-1")
        again = destination.create_audience("Once", idempotency_key="k-1")
        other = destination.create_audience("Once", idempotency_key="k-2")
        assert again == first and other.id != first.id
        assert sorted(self.fake.audiences) == sorted([first.id, other.id])

    def test_add_remove_update(self, destination: WebhookDestination) -> None:
        audience = destination.create_audience("Members", idempotency_key="c")
        members = [person(i) for i in range(4)]
        b = batch(destination, members, TIER=["gold"] * 4)
        destination.add(audience, b, CallContext(batch_id="add-1"))
        sent = {k: r for k, r in zip(b.keys, b.records, strict=True)}
        assert self.stored_records(destination, audience) == {s for r in b.records for s in r}
        assert self.fake.keys(audience.id) == {"p0", "p1", "p2", "p3"}
        # removal carries exactly what was recorded
        gone = RemovalBatch(["p0", "p1"], [sent["p0"], sent["p1"]])
        destination.remove(audience, gone, CallContext(batch_id="rm-1"))
        left = {s for k in ("p2", "p3") for s in sent[k]}
        assert self.stored_records(destination, audience) == left
        destination.remove(audience, gone, CallContext(batch_id="rm-2"))  # absent: fine
        assert self.stored_records(destination, audience) == left
        destination.update(
            audience, batch(destination, [person(2)], TIER=["silver"]), CallContext(batch_id="u")
        )
        assert {a["TIER"] for a in self.fake.attributes(audience.id).values()} == {
            "gold",
            "silver",
        }

    def test_a_replayed_batch_is_not_applied_twice(self, destination: WebhookDestination) -> None:
        audience = destination.create_audience("Replay", idempotency_key="c")
        sent = batch(destination, [person(1)])
        destination.add(audience, sent, CallContext(batch_id="b-1"))
        rec = sent.records[0]
        destination.remove(audience, RemovalBatch(["p1"], [rec]), CallContext(batch_id="b-2"))
        # the add arrives again (a retry after a lost answer): answered, not applied
        destination.add(audience, sent, CallContext(batch_id="b-1"))
        assert self.stored_records(destination, audience) == set()
        assert [d.replay for d in self.fake.deliveries][-1] is True

    def test_raw_pii_is_matched_by_hash_at_the_receiver(self, tmp_path: Path) -> None:
        with WebhookReceiver(SECRET, pii="raw") as fake:
            dest = against(tmp_path, fake, pii="raw")
            audience = dest.create_audience("Raw", idempotency_key="c")
            b = batch(dest, [person(1), person(2)])
            dest.add(audience, b, CallContext(batch_id="a"))
            assert fake.records(audience.id) == {s for r in b.records for s in r}
            dest.remove(audience, RemovalBatch(["p1"], [b.records[0]]), CallContext(batch_id="r"))
            assert fake.records(audience.id) == set(b.records[1])
            dest.close()


# -- the receiver's contract and faults --------------------------------------------------------


def signed_post(
    http: httpx.Client,
    fake: WebhookReceiver,
    event: dict[str, Any],
    msg_id: str,
    secret: str = SECRET,
) -> httpx.Response:
    body = json.dumps(event)
    now = dt.datetime.now(dt.UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }
    return http.post(fake.url, content=body, headers=headers)


def test_the_receiver_refuses_raw_personal_data_where_a_hash_belongs(
    receiver: WebhookReceiver,
) -> None:
    http = httpx.Client()
    created = {"version": 1, "type": "audience.created", "batch_id": "c", "pii": "hashed"}
    created["audience"] = {"id": "aud_x", "name": "X"}
    assert signed_post(http, receiver, created, "c").status_code == 200
    event = {**created, "type": "audience.members_entered", "batch_id": "m"}
    for identifiers, why in [
        ({"email": "jane@example.com"}, "where a hash belongs"),
        ({"email_sha256": "jane@example.com"}, "not a lowercase hex SHA-256"),
        ({"shoe_size": "42"}, "unknown identifier"),
    ]:
        event["members"] = [{"key": "p1", "identifiers": identifiers, "attributes": {}}]
        answer = signed_post(http, receiver, event, f"m-{why}")
        assert answer.status_code == 400 and why in answer.json()["error"]
    event["members"] = [{"identifiers": {}}]
    assert signed_post(http, receiver, event, "empty").status_code == 400  # schema: minProperties
    assert receiver.records("aud_x") == set()
    assert signed_post(http, receiver, created, "c2", secret=OTHER_SECRET).status_code == 401
    http.close()


def test_a_wrong_secret_is_refused_credentials(tmp_path: Path, receiver: WebhookReceiver) -> None:
    dest = against(tmp_path, receiver, secret=OTHER_SECRET)
    with pytest.raises(CredentialsRefused, match="refused the signature"):
        dest.create_audience("A", idempotency_key="k")
    assert receiver.audiences == {} and dest.list_audiences() == []
    dest.close()


@pytest.mark.parametrize("retry_after", ["3", None])
def test_throttling_is_waited_out_and_applied_once(
    tmp_path: Path, receiver: WebhookReceiver, retry_after: str | None
) -> None:
    dest = against(tmp_path, receiver)
    audience = dest.create_audience("A", idempotency_key="c")
    receiver.fail(429, retry_after=retry_after, times=2)
    b = batch(dest, [person(1)])
    with pytest.raises(ThrottledError) as caught:
        dest.add(audience, b, CallContext(batch_id="t"))
    assert caught.value.retry_after == (3.0 if retry_after else None)
    waits: list[RetryEvent] = []
    fast_policy(waits).call(dest.add, audience, b, CallContext(batch_id="t"))
    assert [w.kind for w in waits] == ["throttled"]
    assert retry_after is None or waits[0].wait >= 3.0
    assert receiver.records(audience.id) == set(b.records[0])
    dest.close()


def test_a_lost_answer_is_retried_and_applied_once(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    dest = against(tmp_path, receiver)
    audience = dest.create_audience("A", idempotency_key="c")
    receiver.fail(502, apply=True)
    b = batch(dest, [person(1), person(2)])
    waits: list[RetryEvent] = []
    fast_policy(waits).call(dest.add, audience, b, CallContext(batch_id="lost"))
    assert [w.kind for w in waits] == ["transient"]
    mine = [d for d in receiver.deliveries if d.msg_id == "lost"]
    assert [(d.status, d.applied, d.replay) for d in mine] == [
        (502, True, False),
        (200, False, True),
    ]
    assert receiver.records(audience.id) == {s for r in b.records for s in r}
    dest.close()


def test_gone_stops_without_retrying(tmp_path: Path, receiver: WebhookReceiver) -> None:
    dest = against(tmp_path, receiver)
    audience = dest.create_audience("A", idempotency_key="c")
    receiver.fail(410)
    waits: list[RetryEvent] = []
    with pytest.raises(TerminalError, match="asked to stop"):
        fast_policy(waits).call(
            dest.add, audience, batch(dest, [person(1)]), CallContext(batch_id="g")
        )
    assert waits == [] and receiver.records(audience.id) == set()
    dest.close()


def test_a_slow_answer_times_out_and_the_retry_is_a_replay(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    dest = against(tmp_path, receiver, timeout_seconds=0.2)
    audience = dest.create_audience("A", idempotency_key="c")
    receiver.slow(60)  # released when the receiver stops
    b = batch(dest, [person(1)])
    with pytest.raises(TransientError, match="timed out"):
        dest.add(audience, b, CallContext(batch_id="slow"))
    dest.add(audience, b, CallContext(batch_id="slow"))
    assert receiver.records(audience.id) == set(b.records[0])
    assert [d.replay for d in receiver.deliveries if d.msg_id == "slow"] == [False, True]
    dest.close()


# -- reconcile apply end to end on examples/webhook -----------------------------------------------

DESIRED_SQL = """
SELECT customer_id, email, phone, first_name, total_spend FROM profiles
WHERE total_spend >= 1000 AND email_consent
  AND customer_id NOT IN (SELECT customer_id FROM profiles WHERE email LIKE '%@example.invalid')
"""


class TestWebhookEngine:
    """``reconcile apply`` against the fake receiver through the integration's ``endpoint``.
    Provides the hooks of the coming ``EngineConformance`` (``integration_yaml``, the
    ``fake`` fixture, :meth:`held`) and should subclass it once it lands."""

    @pytest.fixture
    def fake(self) -> Iterator[WebhookReceiver]:
        with WebhookReceiver(SECRET) as receiver:
            yield receiver

    def integration_yaml(self, tmp: Path, *, endpoint: str, **knobs: Any) -> str:
        text = (EXAMPLE / "integrations" / "crm-hooks.yaml").read_text()
        for key, value in knobs.items():
            text = text.replace(f"  {key}: ", f"  {key}: {value}  # was: ", 1)
        return text + f"endpoint: {endpoint}\n"

    def held(self, fake: WebhookReceiver) -> dict[str, set[str]]:
        return fake.held()

    @pytest.fixture
    def ws(self, tmp_path: Path, fake: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> WS:
        root = tmp_path / "ws"
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".reconcile"))
        allow_ephemeral_state(root)
        yaml = self.integration_yaml(tmp_path, endpoint=fake.url, batch_size=20)
        (root / "integrations" / "crm-hooks.yaml").write_text(yaml)
        monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
        return WS(root)

    @staticmethod
    def desired(ws: WS) -> dict[str, set[str]]:
        """The audience the workspace asks for, computed here from the source (the oracle)."""
        con = duckdb.connect(str(ws.root / ".reconcile" / "demo.duckdb"), read_only=True)
        try:
            rows = con.execute(DESIRED_SQL).fetchall()
        finally:
            con.close()
        context = NormaliseContext("AU")
        held: set[str] = set()
        for _key, email, phone, *_ in rows:
            held |= set(
                records({"email": email, "phone": phone}, ("email", "phone"), HASHED, context)
            )
        return {"Big spenders": held}

    @staticmethod
    def change_source(ws: WS) -> None:
        """Two members leave, two non-members enter, two members get a new first name."""
        con = duckdb.connect(str(ws.root / ".reconcile" / "demo.duckdb"))
        try:
            members = [
                r[0] for r in con.execute(DESIRED_SQL + " ORDER BY customer_id LIMIT 6").fetchall()
            ]
            outsiders = [
                r[0]
                for r in con.execute(
                    "SELECT customer_id FROM profiles WHERE total_spend < 1000 AND email_consent "
                    "AND email LIKE '%@%' AND email NOT LIKE '%@example.invalid' "
                    "ORDER BY customer_id LIMIT 2"
                ).fetchall()
            ]
            con.execute(
                "UPDATE profiles SET total_spend = 1 WHERE customer_id IN (?, ?)", members[:2]
            )
            con.execute(
                "UPDATE profiles SET total_spend = 5000 WHERE customer_id IN (?, ?)", outsiders
            )
            con.execute(
                "UPDATE profiles SET first_name = 'Renamed' WHERE customer_id IN (?, ?)",
                members[2:4],
            )
        finally:
            con.close()

    def test_a_member_whose_identifiers_another_holds_still_leaves_by_key(
        self, ws: WS, fake: WebhookReceiver
    ) -> None:
        """Two members share an inbox (and a phone): when one leaves, the receiver (which
        holds members by key) is told, with no identifiers to remove."""
        assert cli(ws, "apply", "--auto-approve").exit_code == 0  # makes the demo data
        con = duckdb.connect(str(ws.root / ".reconcile" / "demo.duckdb"))
        try:
            a, b = (
                r[0] for r in con.execute(DESIRED_SQL + " ORDER BY customer_id LIMIT 2").fetchall()
            )
            con.execute(
                "UPDATE profiles SET email = upper(s.email), phone = s.phone FROM "
                "(SELECT email, phone FROM profiles WHERE customer_id = ?) s WHERE customer_id = ?",
                [a, b],
            )
        finally:
            con.close()
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
        (audience_id,) = fake.audiences
        assert {a, b} <= set(fake.members_by_key(audience_id))
        con = duckdb.connect(str(ws.root / ".reconcile" / "demo.duckdb"))
        try:
            con.execute("UPDATE profiles SET total_spend = 1 WHERE customer_id = ?", [b])
        finally:
            con.close()
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        held = fake.members_by_key(audience_id)
        assert b not in held and a in held  # b was told to leave; a's shared inbox stays
        assert self.held(fake) == self.desired(ws)
        assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0

    def test_apply_holds_the_desired_audience_and_then_plans_nothing(
        self, ws: WS, fake: WebhookReceiver
    ) -> None:
        # the first creation and the first member batch lose their answers: both are resent
        # with the same webhook-id and the receiver applies each once
        fake.fail(500, retry_after="0", apply=True, on="audience.created")
        fake.fail(500, retry_after="0", apply=True, on="audience.members_entered")
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        desired = self.desired(ws)
        assert desired["Big spenders"] and self.held(fake) == desired
        replays = [d for d in fake.deliveries if d.replay]
        assert [d.type for d in replays] == ["audience.created", "audience.members_entered"]
        applied_ids = [d.msg_id for d in fake.applied()]
        assert len(applied_ids) == len(set(applied_ids)) > 2  # several batches of 20
        assert SECRET not in res.output + res.stderr
        assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
        # the audience is remembered next to the state; `reconcile lists` reads it
        lists = cli(ws, "lists", "crm-hooks")
        assert lists.exit_code == 0 and "Big spenders" in lists.output

        self.change_source(ws)
        planned = cli(ws, "plan", "--detailed-exitcode")
        assert planned.exit_code == 2, planned.output + planned.stderr
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        assert self.held(fake) == self.desired(ws)
        (audience,) = fake.audiences
        names = {a.get("FIRST_NAME") for a in fake.attributes(audience).values()}
        assert "Renamed" in names
        kinds = {d.type for d in fake.applied()}
        assert {"audience.members_left", "audience.members_changed"} <= kinds
        assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0

    def test_a_receiver_that_asks_to_stop_fails_the_activation(
        self, ws: WS, fake: WebhookReceiver
    ) -> None:
        fake.fail(410, on="audience.members_entered", times=1)
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 1
        assert "asked to stop" in res.output + res.stderr
        assert self.held(fake) == {"Big spenders": set()}
        plan = cli(ws, "plan", "--detailed-exitcode")
        assert plan.exit_code == 2  # still to send
        # the refused call took none of its members: no warning about calls in flight, and
        # they enter (not 'change') when sent again
        assert "never recorded" not in plan.output + plan.stderr
        again = cli(ws, "apply", "--auto-approve")
        assert again.exit_code == 0, again.output + again.stderr
        assert "~0)" in again.output
        assert {d.type for d in fake.applied()} == {"audience.created", "audience.members_entered"}
        assert self.held(fake) == self.desired(ws)

    def test_a_call_only_ever_throttled_took_none_of_its_members(
        self, ws: WS, fake: WebhookReceiver
    ) -> None:
        """429 with a Retry-After past the integration's budget: the call gives up having
        been refused every time, so its members are not left in flight — the next plan warns
        of nothing and the next apply makes them enter (not 'change')."""
        path = ws.root / "integrations" / "crm-hooks.yaml"
        path.write_text(
            path.read_text().replace("  pii: hashed", "  retry_budget_minutes: 1\n  pii: hashed")
        )
        fake.fail(429, retry_after="600", on="audience.members_entered", times=1)
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 1, res.output + res.stderr
        assert self.held(fake) == {"Big spenders": set()}
        plan = cli(ws, "plan", "--detailed-exitcode")
        assert plan.exit_code == 2 and "never recorded" not in plan.output + plan.stderr
        again = cli(ws, "apply", "--auto-approve")
        assert again.exit_code == 0, again.output + again.stderr
        assert "~0)" in again.output and self.held(fake) == self.desired(ws)
        assert "audience.members_changed" not in {d.type for d in fake.applied()}

    def test_a_wrong_secret_disables_the_activation(
        self, ws: WS, fake: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("WEBHOOK_SECRET", OTHER_SECRET)
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 1 and "Disabled" in res.output + res.stderr
        assert OTHER_SECRET not in res.output + res.stderr
        assert fake.audiences == {}

    def test_a_lost_answer_to_a_creation_is_sent_again_without_waiting_for_lookups(
        self, ws: WS, fake: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A creation is found only in this process's registry: after a lost answer, the
        engine's lookups spread over 15 s (for vendors where it settles later) could find
        nothing. The retry resends ``audience.created`` under the same ``webhook-id`` at once,
        and the receiver holds one audience with exactly the desired members."""
        path = ws.root / "integrations" / "crm-hooks.yaml"
        path.write_text(
            path.read_text().replace("  pii: hashed", "  timeout_seconds: 0.5\n  pii: hashed")
        )
        naps: list[float] = []
        monkeypatch.setattr(audience_steps, "time", SimpleNamespace(sleep=naps.append))
        fake.slow(30, on="audience.created")  # the first attempt's answer never comes in time
        res = cli(ws, "-v", "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        assert naps == []
        assert 'big-spenders-crm: audience "Big spenders": create: retrying' in res.stderr
        assert len(fake.audiences) == 1 and self.held(fake) == self.desired(ws)
        created = [d for d in fake.deliveries if d.type == "audience.created"]
        assert len({d.msg_id for d in created}) == 1 and [d.replay for d in created] == [
            False,
            True,
        ]


def test_the_documented_event_is_valid() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "destinations.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    jsonschema.validate(json.loads(example), EVENT_SCHEMA)


def test_a_receiver_may_refuse_members_in_its_answer(tmp_path: Path) -> None:
    answer = {
        "rejected": {"p1": "unknown customer", "zz": "not in the batch"},
        "retry": {"p2": "busy"},
    }
    dest = make(
        tmp_path,
        client=httpx.Client(
            transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
        ),
    )
    b = batch(dest, [person(1), person(2), person(3)])
    outcome = dest.add(AudienceRef("a", "A"), b, CallContext(batch_id="r"))
    assert outcome.rejected == {"p1": "unknown customer"} and outcome.retry == {"p2": "busy"}
    # without keys in the events the receiver cannot name members: all taken
    keyless = make(tmp_path, client=dest.client.http, send_keys=False)
    assert not keyless.add(AudienceRef("a", "A"), b, CallContext(batch_id="s")).rejected


def test_the_fake_refuses_rejected_people_and_tells_which(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    dest = against(tmp_path, receiver)
    audience = dest.create_audience("A", idempotency_key="c")
    receiver.reject({"p2": {"email": person(2)["email"], "phone": None}})
    b = batch(dest, [person(1), person(2)])
    outcome = dest.add(audience, b, CallContext(batch_id="a"))
    assert set(outcome.rejected) == {"p2"}
    assert receiver.records(audience.id) == set(b.records[0])
    receiver.expire_token()
    with pytest.raises(CredentialsRefused):
        dest.add(audience, b, CallContext(batch_id="b"))
    receiver.heal()
    assert not dest.add(audience, b, CallContext(batch_id="c")).rejected
    receiver.delete_audience("A")
    with pytest.raises(TerminalError):
        dest.add(audience, b, CallContext(batch_id="d"))
    dest.close()


# ------------------------------------------------------------------ the shared conformance suite
from tests.destination_conformance import AdapterConformance, EngineConformance  # noqa: E402


class TestWebhookConformance(AdapterConformance):
    unknown_audience_id = "wh_does_not_exist"

    @pytest.fixture
    def destination(self, tmp_path: Path, receiver: WebhookReceiver):
        self.fake = receiver
        dest = against(tmp_path, receiver)
        yield dest
        dest.close()

    def stored_records(self, destination: Any, audience: AudienceRef) -> set[str]:
        return self.fake.records(audience.id)

    def delete_outside(self, destination: Any, audience: AudienceRef) -> None:
        self.fake.delete_audience(audience.name)


class TestWebhookEngineConformance(EngineConformance):
    refreshes = False  # the receiver is never asked what it holds

    @pytest.fixture
    def fake(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
        monkeypatch.setenv("WEBHOOK_CONFORMANCE_SECRET", SECRET)
        with WebhookReceiver(SECRET) as receiver:
            self.receiver = receiver
            yield receiver

    def integration_yaml(self, tmp: Path, **knobs: Any) -> str:
        config = {"url": "https://hooks.example.com/audiences", "identifiers": ["email", "phone"]}
        config |= {"batch_size": 7} | knobs
        lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in config.items())
        return (
            "type: webhook\nconsent: email_consent\n"
            "credentials:\n  secret: ${env:WEBHOOK_CONFORMANCE_SECRET}\n"
            f"endpoint: {self.receiver.url}\nconfig:\n{lines}"
        )

    def held(self, fake: WebhookReceiver) -> dict[str, set[str]]:
        return fake.held()


def test_nested_values_python_cannot_hold_arrive_as_json(workspace, monkeypatch) -> None:
    """A list of nanosecond timestamps (or one holding an infinite date) used to stop every
    apply with an internal error: each element now converts on its own."""
    from tests.conftest import RECONCILE_YAML

    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    with WebhookReceiver(SECRET) as rx:
        integration = (
            "type: webhook\nconsent: email_consent\n"
            "credentials: {secret: '${env:WEBHOOK_SECRET}'}\n"
            f"attributes: {{SEEN: seen, DAYS: days}}\nconfig: {{identifiers: [email]}}\n"
            f"endpoint: {rx.url}\n"
        )
        contract = RECONCILE_YAML.replace(
            "identifiers: {email: email, phone: phone}", "identifiers: {email: email}"
        ).replace(
            "attributes: [first_name, country, total_spend, email_consent, seg_a, seg_b]",
            "attributes: [email_consent, seen, days]",
        )
        ws = workspace(
            {"act": "segments: [all]\ndestination: sandbox\nname: Aud\nattributes: [SEEN, DAYS]\n"},
            segments={"all": "sql: SELECT customer_id FROM profiles\n"},
            integration=integration,
            reconcile_yaml=contract,
        )
        ws.alter_profiles(
            "DROP TABLE profiles",
            "CREATE TABLE profiles (customer_id VARCHAR, email VARCHAR, email_consent BOOLEAN, "
            "seen TIMESTAMP_NS[], days DATE[])",
            "INSERT INTO profiles VALUES ('c1', 'a@example.com', true, "
            "['2024-01-01 10:00:00.123456789'::TIMESTAMP_NS], ['infinity'::DATE, '2024-01-02'])",
        )
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        (audience_id,) = rx.audiences
        assert rx.members_by_key(audience_id)["c1"] == {
            "SEEN": ["2024-01-01 10:00:00.123456789"],
            "DAYS": [None, "2024-01-02"],
        }


def test_intervals_maps_and_blobs_arrive_as_json_a_receiver_can_read() -> None:
    """An INTERVAL was sent as Arrow's [months, days, nanoseconds], a MAP as a list of
    pairs and a BLOB as Python's b'...' text: now ISO 8601, an object and base64."""
    from destinations.columns import LazyColumn

    rel = duckdb.sql(
        "SELECT INTERVAL '14 months 3 days 4 hours 5 minutes 6.5 seconds' AS i, "
        "MAP {'x': 1, 'y': 2} AS m, '\\xAA\\xFF'::BLOB AS b, NULL::MAP(VARCHAR, INT) AS n, "
        "[MAP {'x': 1}] AS l, {'s': MAP {'y': [MAP {'z': 2}]}} AS s"
    ).arrow()
    table = rel.read_all() if hasattr(rel, "read_all") else rel
    got = {n: json_value(LazyColumn(table.column(n))[0]) for n in table.column_names}
    assert got == {
        "i": "P1Y2M3DT4H5M6.5S",
        "m": {"x": 1, "y": 2},
        "b": "qv8=",
        "n": None,
        "l": [{"x": 1}],  # maps inside lists and structs too
        "s": {"s": {"y": [{"z": 2}]}},
    }
