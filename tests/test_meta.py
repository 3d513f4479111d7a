"""The ``meta_custom_audiences`` destination: payloads and error classification (unit, with
``httpx.MockTransport``), the adapter against the fake Graph API (``tests.fakes.meta``), and
the example workspace end to end through the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from destinations import registry
from destinations.base import (
    AudienceRef,
    CallContext,
    Destination,
    DestinationContext,
    MemberBatch,
    RemovalBatch,
)
from destinations.identity import META, NormaliseContext, encode, sha256_hex
from destinations.meta import MetaConfig, MetaCredentials, MetaCustomAudiences
from destinations.meta import payload as meta_payload
from destinations.meta.adapter import _ref
from destinations.meta.client import classify
from destinations.retry import RetryEvent
from reconciler.errors import (
    AudienceGone,
    CredentialsRefused,
    TerminalError,
    ThrottledError,
    TransientError,
)
from tests.conftest import WS, allow_ephemeral_state, cli
from tests.fakes.meta import FakeMeta

TOKEN = "meta-test-token-0123456789"
ACCOUNT = "1234567890"
PREFIX = {e.field: e.prefix for e in META.encodings}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "meta"


def make(
    client: httpx.Client, *, token: str = TOKEN, secret: str | None = None, **config: Any
) -> MetaCustomAudiences:
    creds = MetaCredentials(
        access_token=SecretStr(token), app_secret=SecretStr(secret) if secret else None
    )
    config.setdefault("ad_account_id", f"act_{ACCOUNT}")
    context = DestinationContext(root=Path("."), default_phone_country="AU")
    return MetaCustomAudiences(MetaConfig(**config), creds, context, client)


def batch(dest: MetaCustomAudiences, people: list[dict[str, str | None]]) -> MemberBatch:
    """What the engine hands over: values and records by the adapter's declared identity
    (the engine computes the same in SQL)."""
    ctx = NormaliseContext("AU")
    fields = [e.field for e in dest.identity.encodings]
    values: dict[str, list[str | None]] = {f: [] for f in fields}
    records = []
    for person in people:
        encoded = {e.encoding.field: e for e in encode(person, dest.identity.accepted, META, ctx)}
        for f in fields:
            values[f].append(encoded[f].value if f in encoded else None)
        records.append(tuple(e.record for e in encoded.values()))
    return MemberBatch(keys=[p["key"] for p in people], values=values, records=records)


def person(i: int, *, phone: bool = True) -> dict[str, str | None]:
    return {
        "key": f"p{i}",
        "email": f" User{i}@Example.com",
        "phone": f"0412 345 {i:03d}" if phone else None,
    }


def ctx(batch_id: str = "b-1", **kw: Any) -> CallContext:
    return CallContext(batch_id=batch_id, session_id=77, **kw)


# ------------------------------------------------------------------ unit: config


def test_config_reads_account_ids_with_or_without_act() -> None:
    assert MetaConfig(ad_account_id="act_42").account == "act_42"
    assert MetaConfig(ad_account_id="42").ad_account_id == "42"
    assert MetaConfig(ad_account_id=42).account == "act_42"


@pytest.mark.parametrize(
    "bad",
    [
        {"ad_account_id": "act_12x"},
        {"ad_account_id": "1", "batch_size": 10_001},
        {"ad_account_id": "1", "identifiers": ["email", "shoe_size"]},
        {"ad_account_id": "1", "api_version": "24"},
        {"ad_account_id": "1", "customer_file_source": "ANYONE"},
        {"ad_account_id": "1", "surprise": True},
    ],
)
def test_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        MetaConfig(**bad)


def test_credentials_print_redacted_and_give_the_appsecret_proof() -> None:
    creds = MetaCredentials(access_token=SecretStr(TOKEN), app_secret=SecretStr("s3cr3t-app"))
    assert TOKEN not in repr(creds) and "s3cr3t-app" not in str(creds)
    want = hmac.new(b"s3cr3t-app", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert creds.appsecret_proof() == want
    assert MetaCredentials(access_token=SecretStr(TOKEN)).appsecret_proof() is None


def test_registered_under_its_type_name() -> None:
    assert registry.load("meta_custom_audiences") is MetaCustomAudiences


# ------------------------------------------------------------------ unit: payloads


def test_one_identifier_type_uses_the_single_key_schema() -> None:
    dest = make(httpx.Client(), identifiers=["email"])
    sent = meta_payload.addition(dest.fields, batch(dest, [person(1), person(2)]))
    assert sent.body == {
        "schema": "EMAIL_SHA256",
        "data": [sha256_hex("user1@example.com"), sha256_hex("user2@example.com")],
    }


def test_several_types_use_the_multi_key_schema_with_blanks() -> None:
    dest = make(httpx.Client(), identifiers=["email", "phone", "madid"])
    madid = "AECE52E7-03EE-455A-B3C4-E57283966239"
    people = [person(1, phone=False), {**person(2), "madid": madid}]
    sent = meta_payload.addition(dest.fields, batch(dest, people))
    assert sent.body["schema"] == ["EMAIL", "PHONE", "MADID"]
    assert sent.body["data"] == [
        [sha256_hex("user1@example.com"), "", ""],
        # phone digits without +, hashed; the advertiser id lowercased and NOT hashed
        [sha256_hex("user2@example.com"), sha256_hex("61412345002"), madid.lower()],
    ]


@pytest.mark.parametrize(
    "fields", [("EMAIL",), ("FN",), ("EMAIL", "PHONE"), ("EMAIL", "PHONE", "MADID")]
)
def test_a_batch_read_as_arrow_gives_the_same_request_as_python_columns(fields) -> None:
    import pyarrow as pa

    h = [sha256_hex(f"user{i}@example.com") for i in range(4)]
    values = {
        "EMAIL": [h[0], None, h[2], None],
        "PHONE": [h[1], None, None, h[3]],
        "MADID": [None, None, "aece52e7-03ee-455a-b3c4-e57283966239", None],
        "FN": [h[3], None, None, h[0]],
    }
    keys = ["k0", "k1", "k2", "k3"]
    columns = {f: values[f] for f in fields}
    table = pa.table(
        {"key": keys, **{f"value:{f}": pa.array(v, pa.string()) for f, v in columns.items()}}
    )
    python = meta_payload.addition(fields, MemberBatch(keys=keys, values=columns, records=[]))
    arrow = meta_payload.addition(
        fields, MemberBatch(keys=keys, values=columns, records=[], table=table)
    )
    session = {"session_id": 7, "batch_seq": 1, "last_batch_flag": True}
    want = {"payload": python.body, "session": session}
    assert json.loads(arrow.request_body(session)) == want
    assert json.loads(python.request_body(session)) == want
    assert arrow.keys == python.keys and arrow.unsendable == python.unsendable
    assert "k1" in arrow.unsendable and "k0" not in arrow.unsendable
    assert list(arrow.values) == list(python.values)
    # Meta's invalid-entry samples still name the members on the Arrow path
    answer = {"num_received": 3, "num_invalid_entries": 1, "invalid_entry_samples": {h[2]: "x"}}
    rejected = meta_payload.outcome(answer, arrow, "received").rejected
    assert set(rejected) == {*python.unsendable, "k2"}


def test_a_member_without_values_is_rejected_not_sent() -> None:
    dest = make(httpx.Client(), identifiers=["email", "phone"])
    b = MemberBatch(
        keys=["a", "b"], values={"EMAIL": ["f" * 64, None], "PHONE": [None, None]}, records=[]
    )
    sent = meta_payload.addition(dest.fields, b)
    assert sent.keys == ["a"] and set(sent.unsendable) == {"b"}


def test_removal_rebuilds_rows_from_the_recorded_strings() -> None:
    h1, h2 = "1" * 64, "2" * 64
    removal = RemovalBatch(
        keys=["a", "b", "c"],
        records=[
            (f"email_sha256:{h1}", f"meta_phone_sha256:{h2}"),
            (f"meta_phone_sha256:{h1}",),
            ("phone_sha256:not-a-meta-record",),
        ],
    )
    (sent,) = meta_payload.removals(removal, 10_000)
    assert sent.body == {"schema": ["EMAIL", "PHONE"], "data": [[h1, h2], ["", h1]]}
    assert sent.keys == ["a", "b"] and set(sent.unsendable) == {"c"}
    (only_email,) = meta_payload.removals(RemovalBatch(["a"], [(f"email_sha256:{h1}",)]), 10)
    assert only_email.body == {"schema": "EMAIL_SHA256", "data": [h1]}


def test_a_member_recorded_with_two_e_mails_gets_a_removal_row_per_e_mail() -> None:
    """An update whose answer was lost leaves a member recorded with its old and its new
    e-mail: both must go (one row per member sent only the first)."""
    old, new, phone, other = "1" * 64, "2" * 64, "3" * 64, "4" * 64
    removal = RemovalBatch(
        keys=["a", "b"],
        records=[
            (f"email_sha256:{old}", f"meta_phone_sha256:{phone}", f"email_sha256:{new}"),
            (f"email_sha256:{other}", f"email_sha256:{other}"),  # a repeat is one row
        ],
    )
    (sent,) = meta_payload.removals(removal, 10_000)
    assert sent.body["data"] == [[old, phone], [other, ""], [new, ""]]
    assert sent.keys == ["a", "b", "a"] and not sent.unsendable
    # more rows than a request takes: split, each member's first row in the first request
    first, second = meta_payload.removals(removal, 2)
    assert (first.keys, second.keys) == (["a", "b"], ["a"])
    assert second.body == {"schema": ["EMAIL", "PHONE"], "data": [[new, ""]]}


def test_a_one_batch_session_gets_its_own_id_stable_across_retries() -> None:
    first = meta_payload.session(ctx("b-1"))
    assert first == meta_payload.session(ctx("b-1"))  # the same call retried
    assert first["session_id"] != meta_payload.session(ctx("b-2"))["session_id"]
    assert first["batch_seq"] == 1 and first["last_batch_flag"] is True
    assert 0 < first["session_id"] < 2**53


def test_a_multi_batch_session_keeps_the_engine_session() -> None:
    second = meta_payload.session(ctx("b-9", seq=2, last=False, estimated_total=25_000))
    assert second == {
        "session_id": 77,
        "batch_seq": 2,
        "last_batch_flag": False,
        "estimated_num_total": 25_000,
    }


@pytest.mark.parametrize(
    "samples",
    [
        {"bad-value": "Invalid format"},
        ["bad-value"],
        [["bad-value", ""]],
    ],
)
def test_invalid_samples_reject_exactly_the_sampled_members(samples: Any) -> None:
    sent = meta_payload.Payload({}, ["a", "b"], {}, [("good", ""), ("bad-value", "")])
    answer = {"num_received": 2, "num_invalid_entries": 3, "invalid_entry_samples": samples}
    out = meta_payload.outcome(answer, sent, "received")
    assert set(out.rejected) == {"b"} and not out.retry
    assert "3 invalid" in out.detail and "1 identified" in out.detail


def test_invalid_entries_beyond_the_samples_are_counted_unidentified() -> None:
    sent = meta_payload.Payload({}, ["a", "b"], {}, [("good", ""), ("bad-value", "")])
    answer = {"num_received": 2, "num_invalid_entries": 3, "invalid_entry_samples": ["bad-value"]}
    assert meta_payload.outcome(answer, sent, "received").unidentified == 2
    whole = {"num_received": 2, "num_invalid_entries": 0}
    assert meta_payload.outcome(whole, sent, "received").unidentified == 0


# ------------------------------------------------------------------ unit: classification


def meta_error(status: int, code: int, subcode: int | None = None, headers=None):
    body = {"error": {"message": "m", "type": "OAuthException", "code": code}}
    if subcode is not None:
        body["error"]["error_subcode"] = subcode
    request = httpx.Request("POST", "https://graph.facebook.com/v24.0/1/users")
    return httpx.Response(status, json=body, headers=headers or {}, request=request)


def usage(minutes: int) -> dict[str, str]:
    entry = {"call_count": 100, "total_time": 10, "estimated_time_to_regain_access": minutes}
    return {"X-Business-Use-Case-Usage": json.dumps({ACCOUNT: [entry]})}


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (meta_error(400, 190, 463), CredentialsRefused),
        (meta_error(401, 190), CredentialsRefused),
        (meta_error(400, 80003), ThrottledError),
        (meta_error(400, 17), ThrottledError),
        (meta_error(400, 4), ThrottledError),
        (meta_error(400, 613), ThrottledError),
        (meta_error(400, 32), ThrottledError),
        (meta_error(400, 100, 1487366), AudienceGone),
        (meta_error(400, 200), TerminalError),
        (meta_error(403, 10), TerminalError),
        (meta_error(400, 294), TerminalError),
        (meta_error(400, 2650), TransientError),
        (meta_error(500, 1), TransientError),
        (meta_error(400, 100), TerminalError),
    ],
)
def test_classify(response: httpx.Response, kind: type) -> None:
    error = classify(response)
    assert type(error) is kind
    assert "Meta error" in str(error)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (80003, ThrottledError),
        (4, ThrottledError),
        (190, CredentialsRefused),
        (2650, TransientError),
    ],
)
def test_an_error_body_is_an_error_whatever_the_status(code: int, kind: type) -> None:
    """Meta may answer 200 with an error object: taken as success, the members were recorded
    and never taken, and every later plan said "No changes"."""
    assert type(classify(meta_error(200, code))) is kind


def test_an_answer_that_does_not_say_what_meta_took_is_sent_again() -> None:
    """A 2xx from ``/users`` without ``num_received`` says nothing about the members: it is
    transient (Meta de-duplicates what is sent again), never a success; an audience without
    an id is no audience."""
    sent = meta_payload.Payload(
        body={"schema": "EMAIL_SHA256"}, keys=["a"], unsendable={}, values=[("h",)]
    )
    with pytest.raises(TransientError, match="num_received"):
        meta_payload.outcome({"audience_id": "1"}, sent, "received")
    with pytest.raises(TransientError, match="without an id"):
        _ref({"name": "x"})


def test_classify_takes_the_throttle_wait_from_the_usage_header() -> None:
    assert classify(meta_error(400, 80003, headers=usage(3))).retry_after == 180
    assert classify(meta_error(400, 17, headers=usage(0))).retry_after is None
    assert classify(meta_error(400, 4)).retry_after is None


def test_classify_falls_back_to_the_status_for_other_bodies() -> None:
    req = httpx.Request("GET", "https://graph.facebook.com/v24.0/1")
    assert isinstance(classify(httpx.Response(502, text="<html>", request=req)), TransientError)
    assert classify(httpx.Response(200, json={"id": "1"}, request=req)) is None


def test_requests_carry_the_bearer_token_and_the_proof() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    client = httpx.Client(base_url="https://graph.test", transport=httpx.MockTransport(handler))
    dest = make(client, secret="app-secret-xyz", api_version="v25.0")
    assert dest.list_audiences() == []
    (request,) = seen
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.url.path == f"/v25.0/act_{ACCOUNT}/customaudiences"
    proof = hmac.new(b"app-secret-xyz", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert request.url.params["appsecret_proof"] == proof


def test_no_token_is_refused_before_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    client = httpx.Client(base_url="https://graph.test", transport=httpx.MockTransport(handler))
    context = DestinationContext(root=Path("."))
    dest = MetaCustomAudiences(
        MetaConfig(ad_account_id="1"), MetaCredentials.model_construct(), context, client
    )
    with pytest.raises(CredentialsRefused, match="access token"):
        dest.list_audiences()


# ------------------------------------------------------------------ against the fake Graph API


@pytest.fixture
def fake() -> Iterator[FakeMeta]:
    with FakeMeta(token=TOKEN, account=ACCOUNT) as server:
        yield server


@pytest.fixture
def client(fake: FakeMeta) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


class TestMetaAdapter:
    """Protocol behaviour against the fake. Its hooks are the v2 conformance suite's
    (``destination`` fixture, ``stored_records``): when ``AdapterConformance`` lands this
    class subclasses it."""

    @pytest.fixture
    def destination(self, client: httpx.Client) -> Iterator[Destination]:
        dest = make(client)
        yield dest
        dest.close()

    def stored_records(self, destination: Destination, audience: AudienceRef) -> set[str]:
        fake: FakeMeta = self._fake
        return {f"{PREFIX[k]}:{v}" for k, v in fake.members(audience.id)}

    @pytest.fixture(autouse=True)
    def _keep_fake(self, fake: FakeMeta) -> None:
        self._fake = fake

    def test_create_find_list_and_rename(self, destination) -> None:
        made = destination.create_audience("Spring VIPs", idempotency_key="k-1")
        assert destination.find_audience(made.id).name == "Spring VIPs"
        assert destination.find_audience("Spring VIPs").id == made.id
        assert destination.find_audience("spring vips") is None
        assert made.id in {a.id for a in destination.list_audiences()}
        renamed = destination.rename_audience(made, "Summer VIPs")
        assert destination.read_audience(made).name == renamed.name == "Summer VIPs"

    def test_creation_is_found_by_name_and_key(self, destination, fake: FakeMeta) -> None:
        made = destination.create_audience("Once", idempotency_key="key-1")
        assert destination.create_audience("Once", idempotency_key="key-1").id == made.id
        (held,) = fake.by_name("Once")
        assert held.description == "reconcile:key-1"
        assert held.customer_file_source == "USER_PROVIDED_ONLY"
        assert destination.find_created_audience("Once", idempotency_key="key-1").id == made.id
        assert destination.find_created_audience("Once", idempotency_key="key-2") is None
        fake.add_audience("Twice", "reconcile:key-3")
        assert destination.find_created_audience("Once", idempotency_key="key-3") is None

    def test_listing_follows_the_pages(self, destination, fake: FakeMeta) -> None:
        ids = {fake.add_audience(f"a{i}") for i in range(450)}
        assert {a.id for a in destination.list_audiences()} == ids
        assert destination.find_audience("a449") is not None

    def test_an_audience_of_another_account_is_not_found_by_id(self, client) -> None:
        other = make(client, ad_account_id="999")
        mine = make(client).create_audience("Mine", idempotency_key="k")
        with pytest.raises(TerminalError, match="does not exist"):
            other.list_audiences()
        assert make(client).find_audience(mine.id) is not None

    def test_add_and_remove_send_what_was_recorded(self, destination) -> None:
        audience = destination.create_audience("Members", idempotency_key="k")
        sent = batch(destination, [person(i, phone=i % 2 == 0) for i in range(6)])
        out = destination.add(audience, sent, ctx("add-1"))
        assert not out.rejected and not out.retry
        recorded = {r for rec in sent.records for r in rec}
        assert self.stored_records(destination, audience) == recorded
        gone = RemovalBatch(sent.keys[:3], sent.records[:3])
        assert not destination.remove(audience, gone, ctx("rm-1")).rejected
        left = {r for rec in sent.records[3:] for r in rec}
        assert self.stored_records(destination, audience) == left

    def test_a_removal_with_more_rows_than_a_request_takes_is_split(self, client, fake) -> None:
        """Members recorded with two e-mails need two rows each: the removal goes in
        requests of at most ``batch_size`` rows, each a session the fake accepts, and
        every recorded e-mail leaves."""
        destination = make(client, batch_size=3)
        audience = destination.create_audience("Split", idempotency_key="k")
        people = [person(i, phone=False) for i in range(3)]
        old = batch(destination, people)
        new = batch(destination, [p | {"email": f"new{p['key']}@example.com"} for p in people])
        destination.add(audience, old, ctx("add-old"))
        destination.add(audience, new, ctx("add-new"))
        both = [o + n for o, n in zip(old.records, new.records, strict=True)]
        out = destination.remove(audience, RemovalBatch(old.keys, both), ctx("rm"))
        assert not out.rejected
        assert self.stored_records(destination, audience) == set()
        deletes = [b for m, p, b in fake.requests if m == "DELETE" and p.endswith("/users")]
        assert [len(b["payload"]["data"]) for b in deletes] == [3, 3]
        assert len({b["session"]["session_id"] for b in deletes}) == 2

    def test_a_retried_call_is_deduplicated(self, destination, fake: FakeMeta) -> None:
        audience = destination.create_audience("Retry", idempotency_key="k")
        sent = batch(destination, [person(1)])
        destination.add(audience, sent, ctx("same"))
        destination.add(audience, sent, ctx("same"))  # a lost answer, the call sent again
        destination.add(audience, sent, ctx("next"))  # the engine's next batch
        users = [b for m, p, b in fake.requests if p.endswith("/users")]
        assert len({b["session"]["session_id"] for b in users}) == 2

    def test_invalid_entries_reject_only_those_members(self, destination, fake) -> None:
        audience = destination.create_audience("Invalid", idempotency_key="k")
        sent = batch(destination, [person(1), person(2), person(3)])
        fake.reject(sent.values["EMAIL"][1])
        out = destination.add(audience, sent, ctx())
        assert list(out.rejected) == ["p2"] and "1 invalid" in out.detail
        stored = self.stored_records(destination, audience)
        assert set(sent.records[0]) | set(sent.records[2]) == stored

    def test_a_raw_email_where_a_hash_belongs_is_invalid(self, destination, fake) -> None:
        audience = destination.create_audience("Raw", idempotency_key="k")
        raw = MemberBatch(["p1"], {"EMAIL": ["user@example.com"], "PHONE": [None]}, [("x",)])
        out = destination.add(audience, raw, ctx())
        assert "p1" in out.rejected and "SHA-256" in out.rejected["p1"]
        assert fake.members(audience.id) == set()

    def test_a_deleted_audience_reads_as_gone(self, destination, fake: FakeMeta) -> None:
        audience = destination.create_audience("Doomed", idempotency_key="k")
        fake.delete_audience(audience.id)
        assert destination.read_audience(audience) is None
        assert destination.find_audience(audience.id) is None
        with pytest.raises(AudienceGone):
            destination.add(audience, batch(destination, [person(1)]), ctx())
        with pytest.raises(AudienceGone):
            destination.rename_audience(AudienceRef("4242", "never"), "x")

    def test_update_is_not_offered(self, destination) -> None:
        assert not destination.capabilities.update and destination.capabilities.rename
        assert destination.limits.members_per_call <= 10_000


# ------------------------------------------------------------------ faults from the fake


def test_throttling_is_waited_out_by_the_retry_policy(client, fake: FakeMeta) -> None:
    dest = make(client, throttle_backoff_seconds=0.5)
    audience = dest.create_audience("Busy", idempotency_key="k")
    fake.throttle(2, code=80003, only="/users")
    events: list[RetryEvent] = []
    policy = dataclasses.replace(dest.retry_policy, sleep=lambda s: None, on_event=events.append)
    out = policy.call(dest.add, audience, batch(dest, [person(1)]), ctx())
    assert not out.rejected and fake.throttled == 2
    assert [e.kind for e in events] == ["throttled", "throttled"]
    assert all(e.wait >= 0.25 for e in events)  # from throttle_backoff_seconds, not at once
    assert len(fake.members(audience.id)) == 2


def test_a_throttle_answered_with_200_is_waited_out_not_taken_as_success(
    client, fake: FakeMeta
) -> None:
    dest = make(client, throttle_backoff_seconds=0.5)
    audience = dest.create_audience("Busy", idempotency_key="k")
    fake.throttle(1, code=80003, only="/users", status=200)
    events: list[RetryEvent] = []
    policy = dataclasses.replace(dest.retry_policy, sleep=lambda s: None, on_event=events.append)
    out = policy.call(dest.add, audience, batch(dest, [person(1)]), ctx())
    assert not out.rejected and [e.kind for e in events] == ["throttled"]
    assert len(fake.members(audience.id)) == 2  # taken by the retry


@pytest.mark.parametrize(("header", "regain", "wait"), [("7", 0, 7), ("7", 1, 60), (None, 0, None)])
def test_a_throttle_waits_at_least_its_retry_after(header, regain, wait) -> None:
    """A Retry-After on a throttle is a floor as everywhere else (Meta's throttle went out
    again after 1.2 s with ``Retry-After: 2``); Meta's regain time, when longer, wins."""
    usage = {"1": [{"call_count": 100, "estimated_time_to_regain_access": regain}]}
    headers = {"X-Business-Use-Case-Usage": json.dumps(usage)}
    if header is not None:
        headers["Retry-After"] = header
    body = {"error": {"message": "(#613) Calls have exceeded the rate limit", "code": 613}}
    request = httpx.Request("POST", "https://graph.facebook.com/v24.0/1/users")
    error = classify(httpx.Response(400, json=body, headers=headers, request=request))
    assert isinstance(error, ThrottledError) and error.retry_after == wait


def test_a_throttle_with_a_regain_time_waits_that_long(client, fake: FakeMeta) -> None:
    dest = make(client)
    fake.throttle(1, code=17, regain_minutes=2)
    with pytest.raises(ThrottledError) as caught:
        dest.list_audiences()
    assert caught.value.retry_after == 120


def test_server_errors_are_transient(client, fake: FakeMeta) -> None:
    dest = make(client)
    fake.fail(1, status=503)
    with pytest.raises(TransientError):
        dest.list_audiences()
    assert dest.list_audiences() == []


def test_a_success_cut_short_is_a_lost_answer_not_a_refusal(client, fake: FakeMeta) -> None:
    """A 200 whose body is not JSON (cut short, a proxy's page) may have been applied: sent
    again, and never counted as refused outright (its members would be dropped from the
    state while Meta holds them)."""
    dest = make(client)
    audience = dest.create_audience("Cut", idempotency_key="k")
    fake.garble(1, only="/users")
    with pytest.raises(TransientError, match="with no JSON") as caught:
        dest.add(audience, batch(dest, [person(1)]), ctx())
    assert caught.value.unanswered
    assert len(fake.members(audience.id)) == 2  # it was applied all the same


def test_a_slow_answer_times_out_as_transient(fake: FakeMeta) -> None:
    with httpx.Client(base_url=fake.url, timeout=0.2) as slow:
        fake.delay(5)
        with pytest.raises(TransientError, match="timed out"):
            make(slow).list_audiences()


def test_an_expired_or_wrong_token_is_refused_without_showing_it(client, fake) -> None:
    with pytest.raises(CredentialsRefused) as wrong:
        make(client, token="not-the-right-token-42").list_audiences()
    assert "not-the-right-token-42" not in str(wrong.value)
    fake.expire_token()
    with pytest.raises(CredentialsRefused, match="190/463"):
        make(client).list_audiences()


def test_an_app_secret_the_app_requires() -> None:
    strict = FakeMeta(token=TOKEN, account=ACCOUNT, app_secret="the-app-secret")
    with strict, httpx.Client(base_url=strict.url) as c:
        with pytest.raises(TerminalError, match="appsecret_proof"):
            make(c).list_audiences()
        assert make(c, secret="the-app-secret").list_audiences() == []
        with pytest.raises(TerminalError, match="appsecret_proof"):
            make(c, secret="another-secret").list_audiences()


def test_the_fake_enforces_rows_sessions_and_schemas(client, fake: FakeMeta) -> None:
    aid = fake.add_audience("Raw calls")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def users(body: dict) -> dict:
        return client.post(f"/v24.0/{aid}/users", json=body, headers=auth).json()

    h = "a" * 64
    too_many = {"payload": {"schema": "EMAIL_SHA256", "data": [h] * 10_001}}
    assert users(too_many)["error"]["code"] == 100
    assert (
        "Invalid schema" in users({"payload": {"schema": "EMAIL", "data": [h]}})["error"]["message"]
    )
    narrow = {"payload": {"schema": ["EMAIL", "PHONE"], "data": [[h]]}}
    assert users(narrow)["error"]["code"] == 100
    one = {"payload": {"schema": "EMAIL_SHA256", "data": [h]}}
    done = {**one, "session": {"session_id": 5, "batch_seq": 1, "last_batch_flag": True}}
    assert users(done)["num_received"] == 1
    assert users(done)["num_received"] == 1  # the same batch again: de-duplicated
    again = {"payload": {"schema": "EMAIL_SHA256", "data": ["b" * 64]}, "session": done["session"]}
    assert "differs" in users(again)["error"]["message"]
    later = {**again, "session": {**done["session"], "batch_seq": 2}}
    assert "last batch" in users(later)["error"]["message"]
    assert client.get(f"/{aid}", headers=auth).json()["error"]["code"] == 2500
    assert client.get(f"/v24.0/{aid}").json()["error"]["code"] == 104


# ------------------------------------------------------------------ the example, end to end


def _example(tmp_path: Path, fake: FakeMeta, monkeypatch, extra_config: str = "") -> WS:
    """A copy of examples/meta whose integration points at ``fake``."""
    ws_root = tmp_path / "meta"
    shutil.copytree(EXAMPLE, ws_root, ignore=shutil.ignore_patterns(".reconcile"))
    allow_ephemeral_state(ws_root)
    integration = ws_root / "integrations" / "meta.yaml"
    text = integration.read_text().replace("http://127.0.0.1:8081", fake.url)
    integration.write_text(text.replace("act_1234567890", f"act_{ACCOUNT}") + extra_config)
    monkeypatch.setenv("META_TOKEN", TOKEN)
    return WS(ws_root)


def test_example_workspace_end_to_end(tmp_path: Path, fake: FakeMeta, monkeypatch) -> None:
    ws = _example(tmp_path, fake, monkeypatch)

    applied = cli(ws, "apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output + applied.stderr
    (audience,) = fake.by_name("Big spenders")
    wanted = _expected_members(ws.root)
    assert wanted and fake.members(audience.id) == wanted

    listed = cli(ws, "lists", "meta", "--format", "json")
    assert listed.exit_code == 0
    assert [(a["id"], a["name"]) for a in listed.json()] == [(audience.id, "Big spenders")]
    again = cli(ws, "plan")
    assert again.exit_code == 0 and "No changes" in again.output, again.output
    assert TOKEN not in applied.output + applied.stderr + again.output


def test_example_members_leave_and_a_deleted_audience_comes_back(
    tmp_path: Path, fake: FakeMeta, monkeypatch
) -> None:
    ws = _example(tmp_path, fake, monkeypatch)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (first,) = fake.by_name("Big spenders")
    # fewer big spenders: the leavers are removed with DELETE /{id}/users
    segment = ws.root / "segments" / "big-spenders.yaml"
    segment.write_text(segment.read_text().replace(">= 500", ">= 700"))
    fewer = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert fewer.exit_code == 0, fewer.output + fewer.stderr
    wanted = _expected_members(ws.root, spend=700)
    assert wanted < _expected_members(ws.root) and fake.members(first.id) == wanted
    assert any(m == "DELETE" and p.endswith("/users") for m, p, _ in fake.requests)
    # deleted in Ads Manager: the next plan sees it gone, apply creates it with its members
    fake.delete_audience(first.id)
    assert "deleted at the destination" in cli(ws, "plan").output
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (second,) = fake.by_name("Big spenders")
    assert second.id != first.id and fake.members(second.id) == wanted


def test_a_throttle_while_the_plan_reads_an_audience_back_does_not_hide_its_deletion(
    tmp_path: Path, fake: FakeMeta, monkeypatch
) -> None:
    """The plan's read of an audience is retried like apply's calls: one throttle on it said
    "could not be read back" and planned no change (exit 0) for an audience deleted at Meta."""
    ws = _example(tmp_path, fake, monkeypatch, "  throttle_backoff_seconds: 0.01\n")
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (first,) = fake.by_name("Big spenders")
    fake.delete_audience(first.id)
    fake.throttle(1, code=4, only=f"/{first.id}")
    planned = cli(ws, "plan", "--detailed-exitcode")
    assert planned.exit_code == 2, planned.output + planned.stderr
    assert "deleted at the destination" in planned.output and fake.throttled == 1


def _expected_members(root: Path, *, spend: int = 500) -> set[tuple[str, str]]:
    return set().union(*_expected_rows(root, spend=spend))


def _expected_rows(
    root: Path, *, create: bool = False, spend: int = 500
) -> list[frozenset[tuple[str, str]]]:
    """What Meta should hold per member, computed independently from the demo profiles: big
    spenders who consented, e-mail and phone (AU) hashed by Meta's rules. ``create``: make
    the demo database first (``reconcile plan`` does)."""
    if create:
        assert cli(WS(root), "plan").exit_code == 0
    con = duckdb.connect(str(root / ".reconcile" / "demo.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT email, phone FROM profiles WHERE total_spend >= ? AND email_consent",
            [spend],
        ).fetchall()
    finally:
        con.close()
    au = NormaliseContext("AU")
    return [
        frozenset(
            (e.encoding.field, e.value)
            for e in encode({"email": email, "phone": phone}, ("email", "phone"), META, au)
        )
        for email, phone in rows
    ]


def test_example_with_throttling_and_an_invalid_entry(
    tmp_path: Path, fake: FakeMeta, monkeypatch
) -> None:
    ws = _example(tmp_path, fake, monkeypatch, "  throttle_backoff_seconds: 0.01\n")
    rows = _expected_rows(ws.root, create=True)
    bad_row = min(rows, key=sorted)
    (bad,) = (v for k, v in bad_row if k == "EMAIL")
    fake.reject(bad)
    fake.throttle(2, code=80003, only="/users")
    applied = cli(ws, "apply", "--auto-approve")
    assert "1 rejected" in applied.output, applied.output + applied.stderr
    assert fake.throttled == 2  # waited out, not failures
    (audience,) = fake.by_name("Big spenders")
    assert fake.members(audience.id) == set().union(*rows) - bad_row
    again = cli(ws, "plan")
    assert "members: +0 -0 ~0" in again.output, again.output  # the refused one is not resent


def test_invalid_entries_meta_does_not_sample_count_against_the_share(
    tmp_path: Path, fake: FakeMeta, monkeypatch
) -> None:
    """Meta samples only some invalid entries: the others cannot be named, but they count as
    refused (a run over ``max_rejected_share`` fails) and the run's message says so."""
    ws = _example(tmp_path, fake, monkeypatch)
    rows = _expected_rows(ws.root, create=True)
    for row in sorted(rows, key=sorted)[:3]:
        fake.reject(next(v for k, v in row if k == "EMAIL"))
    fake.sample_limit = 1  # Meta names one of the three
    activation = ws.root / "activations" / "big-spenders-meta.yaml"
    activation.write_text(activation.read_text() + "max_rejected_share: 0.01\n")
    applied = cli(ws, "apply", "--auto-approve")
    text = applied.output + applied.stderr
    assert applied.exit_code == 1, text
    assert "3 of" in text and "2 of them the destination counted as invalid" in text, text
    logged = cli(ws, "log", "big-spenders-meta")
    assert "without naming them" in logged.output, logged.output
    (run,) = json.loads(cli(ws, "log", "big-spenders-meta", "--format", "json").output)["runs"]
    assert run["failed"] == 3  # the REJECTED column counts the unnamed ones too (it said 1)


def test_a_plan_that_cannot_read_the_audience_back_does_not_say_it_matches(
    tmp_path: Path, fake: FakeMeta, monkeypatch
) -> None:
    ws = _example(tmp_path, fake, monkeypatch)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    fake.expire_token()
    planned = cli(ws, "plan")
    assert "Your destinations match" not in planned.output, planned.output
    assert "No changes planned; read the warnings below." in planned.output
    assert '"big-spenders-meta"' in planned.output and "could not be read back" in planned.output
    assert TOKEN not in planned.output + planned.stderr


# ------------------------------------------------------------------ the shared conformance suite
# The v2 suite (AdapterConformance / EngineConformance) is being rewritten on another branch;
# these subclasses run as soon as it is merged here, and are skipped until then.

try:
    from tests.destination_conformance import AdapterConformance, EngineConformance
except ImportError:  # the v1 suite: nothing to subclass yet
    AdapterConformance = EngineConformance = None  # type: ignore[assignment,misc]


class MetaFaults:
    """The conformance suite's fault hooks, on the fake Graph API."""

    def __init__(self, fake: FakeMeta):
        self.fake = fake

    def throttle_storm(self) -> None:
        self.fake.throttle(5, code=80003, only="/users")

    def throttled(self) -> int:
        return self.fake.throttled

    def expire_token(self) -> None:
        self.fake.expire_token()

    def reject(self, members: dict[str, dict[str, str | None]]) -> None:
        au = NormaliseContext("AU")
        for identifiers in members.values():
            for e in encode(identifiers, ("email", "phone"), META, au):
                self.fake.reject(e.value)

    def delete_audience(self, name: str) -> None:
        for audience in self.fake.by_name(name):
            self.fake.delete_audience(audience.id)

    def heal(self) -> None:
        self.fake.heal()


def _held(fake: FakeMeta, audience_id: str) -> set[str]:
    return {f"{PREFIX[k]}:{v}" for k, v in fake.members(audience_id)}


if AdapterConformance is not None:

    class TestMetaConformance(AdapterConformance):
        unknown_audience_id = "23849999999999999"

        @pytest.fixture
        def destination(self, fake: FakeMeta, client: httpx.Client) -> Iterator[Destination]:
            self.fake = fake
            dest = make(client, identifiers=["email", "phone", "external_id", "madid"])
            yield dest
            dest.close()

        def stored_records(self, destination: Destination, audience: AudienceRef) -> set[str]:
            return _held(self.fake, audience.id)

        def calls_received(self, destination: Destination) -> int:
            return sum(1 for m, _, _ in self.fake.requests if m in ("POST", "DELETE"))

        def delete_outside(self, destination: Destination, audience: AudienceRef) -> None:
            self.fake.delete_audience(audience.id)


if EngineConformance is not None:

    class TestMetaEngine(EngineConformance):
        @pytest.fixture
        def fake(self, monkeypatch) -> Iterator[MetaFaults]:
            monkeypatch.setenv("META_CONFORMANCE_TOKEN", TOKEN)
            with FakeMeta(token=TOKEN, account=ACCOUNT) as server:
                self.server = server
                yield MetaFaults(server)

        def integration_yaml(self, tmp: Path, **knobs: object) -> str:
            config = {
                "ad_account_id": ACCOUNT,
                "identifiers": ["email", "phone"],
                "batch_size": 7,
                "throttle_backoff_seconds": 0.01,
            }
            lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in (config | knobs).items())
            return (
                "type: meta_custom_audiences\nconsent: email_consent\n"
                "credentials:\n  access_token: ${env:META_CONFORMANCE_TOKEN}\n"
                f"endpoint: {self.server.url}\nconfig:\n{lines}"
            )

        def held(self, fake: MetaFaults) -> dict[str, set[str]]:
            with fake.fake._lock:
                live = [a for a in fake.fake.audiences.values() if not a.deleted]
            return {a.name: _held(fake.fake, a.id) for a in live}

        @pytest.mark.slow
        def test_a_split_removal_refused_at_its_second_request_keeps_its_members_in_flight(
            self, workspace, fake: MetaFaults
        ) -> None:
            """A removal Meta needs two requests for (a member recorded with two e-mails):
            the first went through, the second was refused outright. The first request's
            members are gone from Meta, so they stay in flight: when they come back they are
            sent again (they were dropped as "none taken" and recorded as still there)."""
            from tests.conftest import profile
            from tests.engine_conformance import TARGET, activation, apply, killed_after
            from tests.test_recovery import assert_converged

            rows = [profile(0, a=True), profile(1, a=True)]
            ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
            ws.write(
                f"integrations/{TARGET}.yaml",
                self.integration_yaml(ws.root, batch_size=2, identifiers=["email"]),
            )
            apply(ws)
            moved = [profile(0, a=True, email="moved0@example.com"), profile(1, a=True)]
            ws.set_profiles(moved)
            killed_after(ws, "add")  # c00000 recorded with its old and its new e-mail
            ws.set_profiles([dict(r, seg_a=False) for r in moved])
            fake.fake.delay(0, 1, only="/users")  # the first DELETE passes
            fake.fake.throttle(1, code=200, only="/users")  # the second: permission refused
            apply(ws, "--allow-mass-removal", code=1)
            fake.heal()
            ws.set_profiles(moved)  # both come back
            apply(ws)
            assert self.held(fake) == {"Conf": self.desired(ws, moved)}
            assert_converged(ws)

        @pytest.mark.slow
        def test_a_creation_whose_answer_timed_out_is_found_not_made_twice(
            self, workspace, fake: MetaFaults
        ) -> None:
            """The create POST times out on our side and Meta completes it a moment later:
            the retry looks the audience up by its creation key (a few times) instead of
            creating a second audience of the same name and key at once."""
            import time

            from tests.conftest import profile
            from tests.engine_conformance import TARGET, activation, apply
            from tests.test_recovery import assert_converged

            rows = [profile(i, a=True) for i in range(3)]
            ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
            ws.write(
                f"integrations/{TARGET}.yaml", self.integration_yaml(ws.root, timeout_seconds=1)
            )
            fake.fake.delay(0, 3, only="customaudiences")  # the plan's and apply's listings
            fake.fake.delay(1.6, 1, only="customaudiences")  # the create: applied, answer late
            apply(ws)
            time.sleep(1)
            assert [a.name for a in fake.fake.by_name("Conf")] == ["Conf"]
            assert self.held(fake) == {"Conf": self.desired(ws, rows)}
            assert_converged(ws)
