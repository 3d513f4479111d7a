"""A fake Meta Graph API (Custom Audiences) that enforces the contract our adapter relies on.

Real sockets on 127.0.0.1 (port 0 by default), served from its own thread::

    with FakeMeta(token="tok", account="1234") as fake:
        client = httpx.Client(base_url=fake.url)
        ...
        fake.members(audience_id)        # {("EMAIL", "<hash>"), ...}: what it holds

or in its own process, for benchmarks: ``python -m tests.fakes.meta --port 8081 --token
T --account 1234`` (prints ``listening on <url>``, serves until killed).

What it enforces (checks in :mod:`tests.fakes.meta_contract`; each refusal in Meta's shape
``{"error": {message, type, code, error_subcode, fbtrace_id}}``, HTTP 400 unless said):

- ``/v<major>.<minor>/`` before every path; the token as ``Authorization: Bearer`` or
  ``access_token`` (none: code 104; wrong or expired: 190); ``appsecret_proof`` when the
  fake has an app secret (missing or wrong: code 100);
- the ad account (another one: 100/33); audience ids that exist (else 100/33; deleted:
  100/1487366 on use, 100/33 on read);
- ``/users`` bodies: ``payload`` with a known single-key schema (``EMAIL_SHA256``,
  ``PHONE_SHA256``, ``MOBILE_ADVERTISER_ID``) and a flat list, or a multi-key schema (known
  keys, no repeats) and rows of its width; at most 10,000 entries; ``session`` with a
  positive integer ``session_id``, ``batch_seq`` from 1, boolean ``last_batch_flag``; a
  finished session takes no new batch, a repeated batch is de-duplicated;
- entries: hashed keys must be 64 lowercase hex characters (``""`` for unknown); an entry
  that is not (a raw e-mail, say), that has no value, or that holds a value the test marked
  with :meth:`FakeMeta.reject` is counted invalid and sampled, never stored.

Fault injection (each for the next ``n`` requests, optionally only paths containing
``only``): :meth:`throttle` (code 80003 or 17, with ``X-Business-Use-Case-Usage``),
:meth:`fail` (HTTP 5xx), :meth:`delay` (answer late: client timeouts), :meth:`expire_token`,
:meth:`reject`, :meth:`delete_audience`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.meta_contract import (
    HEX64,
    UNHASHED,
    VERSION,
    GraphError,
    Session,
    check_session,
    hashed_column_valid,
    parse_body,
    parse_json,
    required_text,
    rows_of,
    usage_header,
)

#: an internal header: the handler cuts the answer short
GARBLE = "X-Fake-Garble"


@dataclass
class Audience:
    id: str
    name: str
    description: str
    customer_file_source: str
    members: set[tuple[str, str]] = field(default_factory=set)
    deleted: bool = False


@dataclass
class _Fault:
    kind: str
    left: int
    only: str | None
    arg: Any = None


class FakeMeta:
    """The fake server and what it holds; thread-safe."""

    def __init__(
        self,
        *,
        token: str = "fake-meta-token",
        account: str = "1234567890",
        app_secret: str | None = None,
        port: int = 0,
        sample_limit: int = 100,
    ):
        self.token, self.account, self.app_secret = token, account, app_secret
        self.sample_limit = sample_limit
        self.audiences: dict[str, Audience] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or None)
        self.rejected_values: set[str] = set()
        self.throttled = 0  # calls answered "throttled" so far
        self._faults: list[_Fault] = []
        self._sessions: dict[int, Session] = {}
        self._expired = False
        self._ids = itertools.count(23850000000000001)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeMeta:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeMeta:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it holds -----------------------------------------------------------------------
    def members(self, audience_id: str) -> set[tuple[str, str]]:
        """(multi-key field, value) pairs held for the audience."""
        with self._lock:
            return set(self.audiences[audience_id].members)

    def add_audience(self, name: str, description: str = "") -> str:
        """An audience made behind the adapter's back (as in Ads Manager); its id."""
        return self._create(
            {
                "name": name,
                "subtype": "CUSTOM",
                "description": description,
                "customer_file_source": "USER_PROVIDED_ONLY",
            }
        )["id"]

    def by_name(self, name: str) -> list[Audience]:
        with self._lock:
            return [a for a in self.audiences.values() if a.name == name and not a.deleted]

    # -- fault injection ---------------------------------------------------------------------
    def throttle(
        self, n: int = 1, *, code: int = 80003, regain_minutes: int = 0, only=None, status=400
    ):
        """The next ``n`` requests are throttled with ``code``; ``status`` 200: the error body
        comes with HTTP 200, a shape Meta's throttling also takes."""
        self._add(_Fault("throttle", n, only, (code, regain_minutes, status)))

    def fail(self, n: int = 1, *, status: int = 500, only: str | None = None) -> None:
        self._add(_Fault("fail", n, only, status))

    def delay(self, seconds: float, n: int = 1, *, only: str | None = None) -> None:
        self._add(_Fault("delay", n, only, seconds))

    def garble(self, n: int = 1, *, only: str | None = None) -> None:
        """The next ``n`` requests are applied, then answered 200 with a body cut short."""
        self._add(_Fault("garble", n, only, None))

    def expire_token(self) -> None:
        with self._lock:
            self._expired = True

    def reject(self, *values: str) -> None:
        """Entries holding any of these values are counted invalid (and sampled)."""
        with self._lock:
            self.rejected_values.update(values)

    def delete_audience(self, audience_id: str) -> None:
        with self._lock:
            self.audiences[audience_id].deleted = True

    def heal(self) -> None:
        """Every fault off: pending faults dropped, the token valid, no value rejected."""
        with self._lock:
            self._faults.clear()
            self._expired = False
            self.rejected_values.clear()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _fault_for(self, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.left > 0 and (f.only is None or f.only in path):
                    f.left -= 1
                    return f
        return None

    # -- requests ----------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        extra: dict[str, str] = {"X-Business-Use-Case-Usage": usage_header(5, 0, self.account)}
        try:
            data = parse_body(body, headers.get("content-type", ""))
            with self._lock:
                self.requests.append((method, url.path, data or None))
            fault = self._fault_for(url.path)
            if fault is not None and fault.kind == "garble":
                extra[GARBLE] = "1"  # applied below, its answer cut short by the handler
            elif fault is not None:
                self._inject(fault)
            self._authenticate(headers, {**query, **data})
            match = VERSION.match(url.path)
            if match is None:
                raise GraphError(2500, "Unknown path components: no API version in the path")
            parts = url.path[match.end() :].strip("/").split("/")
            return 200, self._route(method, parts, query, data), extra
        except GraphError as exc:
            error = {
                "message": exc.message,
                "type": "OAuthException",
                "code": exc.code,
                "fbtrace_id": "AbCdEfFakeTrace",
            }
            if exc.subcode is not None:
                error["error_subcode"] = exc.subcode
            return exc.status, {"error": error}, {**extra, **exc.headers}

    def _inject(self, fault: _Fault) -> None:
        if fault.kind == "delay":
            self._stop.wait(fault.arg)
            return
        if fault.kind == "fail":
            raise GraphError(2, "An unexpected error has occurred. Please retry.", None, fault.arg)
        code, minutes, status = fault.arg
        with self._lock:
            self.throttled += 1
        err = GraphError(
            code, "(#80003) There have been too many calls to this ad-account.", None, status
        )
        err.headers["X-Business-Use-Case-Usage"] = usage_header(100, minutes, self.account)
        raise err

    def _authenticate(self, headers, params: dict[str, Any]) -> None:
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else params.get("access_token")
        if not token:
            raise GraphError(104, "An access token is required to request this resource.")
        with self._lock:
            expired = self._expired
        if not hmac.compare_digest(str(token), self.token):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")
        if expired:
            raise GraphError(190, "Error validating access token: Session has expired", 463)
        if self.app_secret is not None:
            proof = params.get("appsecret_proof")
            if not proof:
                raise GraphError(100, "API calls from the server require an appsecret_proof")
            want = hmac.new(self.app_secret.encode(), self.token.encode(), hashlib.sha256)
            if not hmac.compare_digest(str(proof), want.hexdigest()):
                raise GraphError(100, "Invalid appsecret_proof provided in the API argument")

    def _route(self, method: str, parts: list[str], query: dict, data: dict) -> dict:
        if len(parts) == 2 and parts[0].startswith("act_") and parts[1] == "customaudiences":
            if parts[0] != f"act_{self.account}":
                raise GraphError(100, f"Object with ID '{parts[0]}' does not exist", 33)
            if method == "GET":
                return self._list(query)
            if method == "POST":
                return self._create(data)
        elif len(parts) == 1 and parts[0].isdigit():
            if method == "GET":
                return self._read(self._audience(parts[0], reading=True), query)
            if method == "POST" and "name" in data:
                with self._lock:
                    self._audience(parts[0]).name = required_text(data, "name")
                return {"success": True}
        elif parts[1:] == ["users"] and parts[0].isdigit() and method in ("POST", "DELETE"):
            return self._users(method, self._audience(parts[0]), data)
        raise GraphError(100, f"Unsupported {method} request for /{'/'.join(parts)}", 33)

    def _audience(self, audience_id: str, *, reading: bool = False) -> Audience:
        with self._lock:
            found = self.audiences.get(audience_id)
        if found is None or (found.deleted and reading):
            raise GraphError(100, f"Object with ID '{audience_id}' does not exist", 33)
        if found.deleted:
            raise GraphError(100, "Custom Audience Deleted: this audience was deleted", 1487366)
        return found

    def _read(self, a: Audience, query: dict) -> dict:
        item = {
            "id": a.id,
            "name": a.name,
            "description": a.description,
            "account_id": self.account,
            "approximate_count_lower_bound": len(a.members),
            "approximate_count_upper_bound": len(a.members),
        }
        fields = str(query.get("fields") or "id").split(",")
        unknown = [f for f in fields if f not in item]
        if unknown:
            raise GraphError(100, f"Tried accessing nonexisting field ({unknown[0]})")
        return {f: item[f] for f in fields}

    def _list(self, query: dict) -> dict:
        limit = int(query.get("limit") or 25)
        with self._lock:
            live = [a for a in self.audiences.values() if not a.deleted]
        start = int(query["after"]) if str(query.get("after", "")).isdigit() else 0
        page = [self._read(a, query) for a in live[start : start + limit]]
        out: dict[str, Any] = {"data": page}
        end = start + len(page)
        out["paging"] = {"cursors": {"before": str(start), "after": str(end)}}
        if end < len(live):
            out["paging"]["next"] = (
                f"{self.url}/v24.0/act_{self.account}/customaudiences?after={end}"
            )
        return out

    def _create(self, data: dict) -> dict:
        name = required_text(data, "name")
        if data.get("subtype") != "CUSTOM":
            raise GraphError(100, "Invalid parameter: subtype must be CUSTOM")
        source = data.get("customer_file_source")
        if source not in (
            "USER_PROVIDED_ONLY",
            "PARTNER_PROVIDED_ONLY",
            "BOTH_USER_AND_PARTNER_PROVIDED",
        ):
            raise GraphError(100, "Invalid parameter: customer_file_source")
        with self._lock:
            aid = str(next(self._ids))
            self.audiences[aid] = Audience(aid, name, str(data.get("description") or ""), source)
        return {"id": aid}

    def _users(self, method: str, audience: Audience, data: dict) -> dict:
        payload = data.get("payload")
        if isinstance(payload, str):
            payload = parse_json(payload, "payload")
        if not isinstance(payload, dict):
            raise GraphError(100, "(#100) The parameter payload is required")
        schema, rows = rows_of(payload)
        session = data.get("session")
        if isinstance(session, str):
            session = parse_json(session, "session")
        # what the batch holds, to tell a replay from a different batch under the same number
        # (values joined by NUL, far cheaper than re-encoding the payload as JSON)
        digest = hashlib.sha256(json.dumps([method, schema]).encode())
        digest.update("\x00".join(itertools.chain.from_iterable(rows)).encode())
        with self._lock:
            if session is not None and check_session(
                self._sessions, audience.id, method, session, digest.hexdigest()
            ):
                return self._answer(audience, session, len(rows), [])
            columns = list(zip(*rows, strict=True))  # none when there is no row
            if columns and self._all_valid(schema, rows, columns):
                for key, column in zip(schema, columns, strict=True):
                    pairs = zip(itertools.repeat(key), filter(None, column))
                    if method == "POST":
                        audience.members.update(pairs)
                    else:
                        audience.members.difference_update(pairs)
                return self._answer(audience, session, len(rows), [])
            invalid: list[tuple[str, str]] = []
            for row in rows:
                why = self._invalid(schema, row)
                if why is not None:
                    invalid.append(why)
                    continue
                cells = {(k, v) for k, v in zip(schema, row, strict=True) if v}
                if method == "POST":
                    audience.members |= cells
                else:
                    audience.members -= cells
        return self._answer(audience, session, len(rows), invalid)

    def _answer(self, audience, session, received: int, invalid: list) -> dict:
        samples = dict(invalid[: self.sample_limit])
        out = {
            "audience_id": audience.id,
            "num_received": received,
            "num_invalid_entries": len(invalid),
            "invalid_entry_samples": samples,
        }
        if session is not None:
            out["session_id"] = str(session["session_id"])
        return out

    def _all_valid(
        self, schema: list[str], rows: list[list[str]], columns: list[tuple[str, ...]]
    ) -> bool:
        """True when no row of ``rows`` (at least one; ``columns`` the same cells per schema
        key) is invalid, checked a column at a time (the rules of :meth:`_invalid`, which
        finds the invalid rows when this is False)."""
        if not all(map(any, rows)):
            return False
        if self.rejected_values and any(not self.rejected_values.isdisjoint(c) for c in columns):
            return False
        return all(
            hashed_column_valid(c)
            for key, c in zip(schema, columns, strict=True)
            if key not in UNHASHED
        )

    def _invalid(self, schema: list[str], row: list[str]) -> tuple[str, str] | None:
        """(sample, reason) when the entry is invalid, else None."""
        if not any(row):
            return ("", "the entry has no value")
        for key, value in zip(schema, row, strict=True):
            if value in self.rejected_values:
                return (value, "the value does not match Meta's format")
            if value and key not in UNHASHED and not HEX64.fullmatch(value):
                return (value, f"{key} is not a SHA-256 hash")
        return None


def _handler(fake: FakeMeta) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer, headers = fake.handle(self.command, self.path, self.headers, body)
            out = json.dumps(answer).encode()
            if headers.pop(GARBLE, None):
                out = out[: len(out) // 2] + b"<html>"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: object) -> None:  # quiet
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a fake Meta Graph API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="fake-meta-token")
    parser.add_argument("--account", default="1234567890")
    parser.add_argument("--app-secret", default=None)
    args = parser.parse_args(argv)
    fake = FakeMeta(
        token=args.token, account=args.account, app_secret=args.app_secret, port=args.port
    )
    print(f"listening on {fake.url}", flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()
