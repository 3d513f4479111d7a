"""A webhook receiver on a real socket (127.0.0.1, port 0, its own thread) that enforces
the contract of ``destinations.webhook``:

- verifies every Standard Webhooks signature with the ``standardwebhooks`` library (a bad
  or missing one: 401);
- de-duplicates on ``webhook-id``: a replay is answered 200 and not applied again;
- validates the event against the published JSON Schema, and that identifiers are hashes
  (``<type>_sha256``: 64 lowercase hex) unless it was configured for ``pii="raw"`` (a raw
  e-mail where a hash belongs: 400);
- keeps what it was told: audiences and, per audience, the identifiers it holds as record
  strings (``email_sha256:<hex>``, like the engine's state; raw values are hashed as a real
  raw receiver would to match removals), with each one's profile key and attributes;
- may refuse members: :meth:`reject` names people (raw identifiers) whose entering is answered
  ``200 {"rejected": {key: reason}}`` and not applied;
- takes faults, answered in order before the next events are applied: :meth:`fail` (a
  status, with or without ``Retry-After``, optionally applying the event first: a lost
  answer) and :meth:`slow` (the event is handled at once, the answer waits); ``on=`` aims
  a fault at the next event of one type.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
from standardwebhooks import Webhook, WebhookVerificationError

from destinations.identity import HASHED, TYPES, NormaliseContext, records
from destinations.webhook.payload import CREATED, EVENT_SCHEMA, LEFT

PATH = "/hooks/audiences"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA)


@dataclass
class Fault:
    status: int = 200
    retry_after: str | None = None
    apply: bool = False  # apply the event, then answer ``status`` (the answer is "lost")
    delay: float = 0.0  # seconds before answering (the event is handled at once)
    on: str | None = None  # only for events of this type (default: the next event)


@dataclass
class Delivery:
    """One request as received: its webhook-id, event type and the status answered."""

    msg_id: str | None
    type: str | None
    status: int
    applied: bool = False
    replay: bool = False


@dataclass
class Audience:
    name: str
    #: record string -> {"key": profile key or None, "attributes": {...}}
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what a receiver that tracks members by profile key holds: key -> attributes
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


def _record(name: str, value: str, *, raw: bool) -> str:
    """An identifier field and value as the engine's record string; raises for a field that
    does not belong (a raw value where a hash belongs, an unknown type)."""
    if name.endswith("_sha256") and TYPES.get(name[: -len("_sha256")], None) is not None:
        if not _HEX64.fullmatch(value):
            raise Rejected(400, f"identifier {name!r} is not a lowercase hex SHA-256")
        return f"{name}:{value}"
    kind = TYPES.get(name)
    if kind is None:
        raise Rejected(400, f"unknown identifier field {name!r}")
    if kind.pii and not raw:
        raise Rejected(400, f"raw personal data in {name!r} where a hash belongs")
    if kind.pii:
        return f"{name}_sha256:{hashlib.sha256(value.encode()).hexdigest()}"
    return f"{name}:{value}"


class WebhookReceiver:
    """Use as a context manager; ``url`` is where to send events."""

    def __init__(self, secret: str, *, pii: str = "hashed", country: str = "AU") -> None:
        self.verifier = Webhook(secret)
        self.pii = pii
        self.country = country
        self.refused: set[str] = set()  # record strings of members to reject
        self.expired = False  # every request answered 401 (until heal)
        self.throttle_count = 0
        self.audiences: dict[str, Audience] = {}
        self.deliveries: list[Delivery] = []
        self.seen: set[str] = set()
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # releases slow answers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- knobs -------------------------------------------------------------------------------
    def fail(
        self,
        status: int,
        *,
        retry_after: str | None = None,
        times: int = 1,
        apply: bool = False,
        on: str | None = None,
    ) -> None:
        """The next ``times`` signed requests (of type ``on``) are answered ``status``
        (``apply``: after applying the event, as when an answer is lost on the way back)."""
        with self._lock:
            self._faults.extend(Fault(status, retry_after, apply, on=on) for _ in range(times))

    def slow(self, seconds: float, *, times: int = 1, on: str | None = None) -> None:
        """The next ``times`` requests are handled at once but answered only after
        ``seconds`` (or at shutdown)."""
        with self._lock:
            self._faults.extend(Fault(delay=seconds, on=on) for _ in range(times))

    # the fault hooks of the engine conformance suite (tests/engine_conformance.py: Faults)
    def throttle_storm(self) -> None:
        """The next five events are answered 429 (``Retry-After: 0``)."""
        self.fail(429, retry_after="0", times=5)

    def throttled(self) -> int:
        return self.throttle_count

    def expire_token(self) -> None:
        """Every request is refused as if the signature were wrong (401)."""
        self.expired = True

    def reject(self, members: dict[str, dict[str, str | None]]) -> None:
        """Refuse these people (profile key -> raw identifiers) whenever they enter."""
        context = NormaliseContext(self.country)
        with self._lock:
            for identifiers in members.values():
                self.refused |= set(records(identifiers, list(identifiers), HASHED, context))

    def delete_audience(self, name: str) -> None:
        """Forget the audience of this name, as if deleted on the receiver's side."""
        with self._lock:
            for audience_id in [i for i, a in self.audiences.items() if a.name == name]:
                del self.audiences[audience_id]

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()
            self.refused.clear()
            self.expired = False

    def _take_fault(self, kind: str | None) -> Fault:
        with self._lock:
            for fault in self._faults:
                if fault.on is None or fault.on == kind:
                    self._faults.remove(fault)
                    return fault
        return Fault()

    # -- what it holds ---------------------------------------------------------------------------
    def records(self, audience_id: str) -> set[str]:
        with self._lock:
            return set(self.audiences[audience_id].rows)

    def attributes(self, audience_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {r: dict(v["attributes"]) for r, v in self.audiences[audience_id].rows.items()}

    def members_by_key(self, audience_id: str) -> dict[str, dict[str, Any]]:
        """What a receiver tracking members by profile key holds: key -> attributes."""
        with self._lock:
            return {k: dict(v) for k, v in self.audiences[audience_id].by_key.items()}

    def keys(self, audience_id: str) -> set[str]:
        with self._lock:
            return {v["key"] for v in self.audiences[audience_id].rows.values()}

    def held(self) -> dict[str, set[str]]:
        """Audience name -> record strings held."""
        with self._lock:
            return {a.name: set(a.rows) for a in self.audiences.values()}

    def applied(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.applied]

    # -- handling ------------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, Fault]:
        """(status, answer body, fault) for one request; applies the event when it should."""
        msg_id = headers.get("webhook-id")
        if path != PATH:
            return self._log(msg_id, None, 404, {"error": "not found"})
        try:
            event = self.verifier.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            return self._log(msg_id, None, 401, {"error": f"signature: {exc}"})
        if self.expired:
            return self._log(msg_id, None, 401, {"error": "signature: secret revoked"})
        kind = event.get("type") if isinstance(event, dict) else None
        fault = self._take_fault(kind)
        if fault.status == 429:
            with self._lock:
                self.throttle_count += 1
        if fault.status != 200 and not fault.apply:
            return self._log(msg_id, kind, fault.status, {"error": "fault"}, fault)
        with self._lock:
            if msg_id in self.seen:
                self.deliveries.append(Delivery(msg_id, kind, fault.status, replay=True))
                return fault.status, {"replayed": True}, fault
            try:
                self._validate(event)
                refused = self._apply(event)
            except Rejected as exc:
                self.deliveries.append(Delivery(msg_id, kind, exc.status))
                return exc.status, {"error": exc.message}, Fault()
            self.seen.add(msg_id)
            self.deliveries.append(Delivery(msg_id, kind, fault.status, applied=True))
        return fault.status, ({"rejected": refused} if refused else {"ok": True}), fault

    def _log(
        self,
        msg_id: str | None,
        kind: str | None,
        status: int,
        answer: dict,
        fault: Fault | None = None,
    ) -> tuple[int, dict, Fault]:
        with self._lock:
            self.deliveries.append(Delivery(msg_id, kind, status))
        return status, answer, fault or Fault()

    def _validate(self, event: Any) -> None:
        errors = sorted(_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "event"
            raise Rejected(400, f"schema: {where}: {errors[0].message}")
        if event["pii"] != self.pii:
            raise Rejected(400, f"this receiver takes pii={self.pii}, got {event['pii']}")
        if event["type"] != CREATED and event["audience"]["id"] not in self.audiences:
            raise Rejected(404, f"unknown audience {event['audience']['id']!r}")

    def _apply(self, event: dict[str, Any]) -> dict[str, str]:
        """Apply the event; returns the members refused (key -> reason)."""
        ref = event["audience"]
        if event["type"] == CREATED:
            known = self.audiences.get(ref["id"])
            if known is not None and known.name != ref["name"]:
                raise Rejected(409, f"audience {ref['id']!r} exists with another name")
            self.audiences.setdefault(ref["id"], Audience(ref["name"]))
            return {}
        raw = self.pii == "raw" and event["type"] != LEFT
        changes = [
            (m, [_record(n, v, raw=raw) for n, v in m["identifiers"].items()])
            for m in event["members"]
        ]  # all checked before anything is applied
        rows = self.audiences[ref["id"]].rows
        refused: dict[str, str] = {}
        for member, recs in changes:
            if event["type"] != LEFT and self.refused.intersection(recs):
                refused[member.get("key", "")] = "refused by the receiver (reject knob)"
                continue
            for rec in recs:
                if event["type"] == LEFT:
                    rows.pop(rec, None)
                else:
                    rows[rec] = {
                        "key": member.get("key"),
                        "attributes": member["attributes"],
                        "identifiers": member["identifiers"],  # in the form they came
                    }
            if "key" in member:
                by_key = self.audiences[ref["id"]].by_key
                if event["type"] == LEFT:
                    by_key.pop(member["key"], None)
                else:
                    by_key[member["key"]] = member["attributes"]
        return refused

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer, fault = receiver.handle(self.path, headers, body)
                if fault.delay:
                    receiver._stopping.wait(fault.delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    if fault.retry_after is not None:
                        self.send_header("retry-after", fault.retry_after)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
