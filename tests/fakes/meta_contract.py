"""The contract the fake Graph API enforces: payload schemas and rows, sessions, request
bodies, and Meta's error and usage-header shapes (used by :mod:`tests.fakes.meta`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any
from urllib.parse import parse_qs

MAX_ROWS = 10_000
SINGLE_KEY = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}
MULTI_KEY = (
    *("EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI"),
    *("CT", "ST", "ZIP", "MADID", "COUNTRY"),
)
UNHASHED = {"EXTERN_ID", "MADID"}
HEX64 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"/v[0-9]+\.[0-9]+/")


class GraphError(Exception):
    def __init__(self, code: int, message: str, subcode: int | None = None, status: int = 400):
        super().__init__(message)
        self.code, self.subcode, self.status, self.message = code, subcode, status, message
        self.headers: dict[str, str] = {}


@dataclass
class Session:
    """One upload session: its audience and method, the batches seen, whether finished."""

    audience: str
    method: str
    seqs: dict[int, str] = field(default_factory=dict)  # seq -> digest of its body
    finished: bool = False


def check_session(
    sessions: dict[int, Session], audience_id: str, method: str, session: Any, digest: str
) -> bool:
    """Check the session fields; True when this batch was received before."""
    if not isinstance(session, dict):
        raise GraphError(100, "(#100) session must be an object")
    sid, seq, last = (session.get(k) for k in ("session_id", "batch_seq", "last_batch_flag"))
    if not (isinstance(sid, int) and not isinstance(sid, bool) and 0 < sid < 2**63):
        raise GraphError(100, "(#100) session_id must be a positive integer")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
        raise GraphError(100, "(#100) batch_seq must be an integer from 1")
    if not isinstance(last, bool):
        raise GraphError(100, "(#100) last_batch_flag must be a boolean")
    total = session.get("estimated_num_total")
    if total is not None and not (isinstance(total, int) and total >= 0):
        raise GraphError(100, "(#100) estimated_num_total must be a non-negative integer")
    s = sessions.setdefault(sid, Session(audience_id, method))
    if (s.audience, s.method) != (audience_id, method):
        raise GraphError(100, "(#100) session_id already used for another upload")
    if seq in s.seqs:
        if s.seqs[seq] != digest:
            raise GraphError(100, f"(#100) batch {seq} of this session differs from before")
        return True
    if s.finished:
        raise GraphError(100, "(#100) the session already received its last batch")
    s.seqs[seq] = digest
    s.finished = last
    return False


def rows_of(payload: dict) -> tuple[list[str], list[list[str]]]:
    schema, data = payload.get("schema"), payload.get("data")
    if not isinstance(data, list):
        raise GraphError(100, "(#100) payload.data must be an array")
    if len(data) > MAX_ROWS:
        raise GraphError(100, f"(#100) at most {MAX_ROWS} entries per request ({len(data)})")
    if isinstance(schema, str):
        if schema not in SINGLE_KEY:
            raise GraphError(100, f"(#100) Invalid schema: {schema}")
        if not all(isinstance(v, str) for v in data):
            raise GraphError(100, "(#100) a single-key schema takes a flat array of strings")
        return [SINGLE_KEY[schema]], [[v] for v in data]
    if not (isinstance(schema, list) and schema and all(k in MULTI_KEY for k in schema)):
        raise GraphError(100, f"(#100) Invalid schema: {schema!r}")
    if len(set(schema)) != len(schema):
        raise GraphError(100, "(#100) Invalid schema: a key is repeated")
    width = len(schema)
    if not all(type(row) is list and len(row) == width for row in data):
        raise GraphError(100, "(#100) every data row must have one value per schema key")
    # one pass over every value, at C speed (a request holds up to 20,000+ of them)
    if not set(map(type, chain.from_iterable(data))) <= {str}:
        raise GraphError(100, "(#100) data values must be strings")
    return schema, data


#: what is left of a column of SHA-256 hex digests (or empty values) once its digits and
#: separators are deleted: nothing
_HEX_AND_NEWLINE = b"0123456789abcdef\n"


def hashed_column_valid(values: tuple[str, ...] | list[str]) -> bool:
    """True when every value is empty or a lower-case SHA-256 hex digest — the whole column
    checked at once (lengths, then the characters); a False sends the caller to its per-row
    check, which finds the rows and says why."""
    if not set(map(len, values)) <= {0, 64}:
        return False
    text = "\n".join(values)
    if text.count("\n") != max(len(values) - 1, 0):  # a newline inside a value
        return False
    return text.isascii() and not text.encode().translate(None, _HEX_AND_NEWLINE)


def usage_header(percent: int, regain_minutes: int, account: str) -> str:
    entry = {
        "type": "custom_audience",
        "call_count": percent,
        "total_cputime": percent // 2,
        "total_time": percent // 2,
        "estimated_time_to_regain_access": regain_minutes,
    }
    return json.dumps({account: [entry]})


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if "json" in content_type:
        parsed = parse_json(body.decode(), "body")
        if not isinstance(parsed, dict):
            raise GraphError(100, "(#100) the body must be a JSON object")
        return parsed
    return {k: v[-1] for k, v in parse_qs(body.decode()).items()}


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise GraphError(100, f"(#100) {what} is not valid JSON") from None


def required_text(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GraphError(100, f"(#100) The parameter {key} is required")
    return value
