"""The JSON documents a webhook receiver gets: one event per call, schema version 1.

Every event is one JSON object::

    {"version": 1,
     "type": "audience.members_entered",
     "batch_id": "4f1c0e...",                  # = the webhook-id header (idempotency key)
     "audience": {"id": "aud_...", "name": "VIP customers"},
     "pii": "hashed",
     "members": [{"key": "c00042",
                  "identifiers": {"email_sha256": "973d...", "phone_sha256": "1b4f..."},
                  "attributes": {"FIRST_NAME": "Jane"}}]}

- ``type``: ``audience.created`` (no ``members``), ``audience.members_entered``,
  ``audience.members_changed`` (same members, new identifiers or attributes: replace what you
  hold for the key) or ``audience.members_left`` (no ``attributes``).
- ``identifiers``: field -> value. ``pii: hashed``: ``<type>_sha256`` -> lowercase hex
  SHA-256 of the normalised value (non-personal types such as ``madid`` are sent as is, under
  their own name). ``pii: raw``: ``<type>`` -> the normalised value. A member without a
  value of some type simply lacks that field.
- ``members_left`` carries what was recorded when the member was sent, which is always the
  hashed form (``email_sha256``...), also under ``pii: raw``: a raw receiver matches removals
  by the SHA-256 of the normalised values it was given. A member recorded with two values of
  one type is listed once per value (same ``key``).
- ``key``: the profile key (left out with ``send_keys: false``).

:data:`EVENT_SCHEMA` is the JSON Schema of these documents (``docs/destinations.md``).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from destinations.base import AudienceRef, MemberBatch, RemovalBatch

__all__ = [
    "CREATED",
    "ENTERED",
    "EVENT_SCHEMA",
    "EVENT_TYPES",
    "LEFT",
    "CHANGED",
    "SCHEMA_VERSION",
    "created_event",
    "dumps",
    "members_event",
    "removal_event",
]

SCHEMA_VERSION = 1
CREATED = "audience.created"
ENTERED = "audience.members_entered"
CHANGED = "audience.members_changed"
LEFT = "audience.members_left"
EVENT_TYPES = (CREATED, ENTERED, CHANGED, LEFT)

Pii = Literal["hashed", "raw"]


def _head(kind: str, audience: AudienceRef, batch_id: str, pii: Pii) -> dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "type": kind,
        "batch_id": batch_id,
        "audience": {"id": audience.id, "name": audience.name},
        "pii": pii,
    }


def created_event(audience: AudienceRef, batch_id: str, *, pii: Pii) -> dict[str, Any]:
    return _head(CREATED, audience, batch_id, pii)


def _recorded(records: Sequence[str]) -> dict[str, str]:
    """Record strings (``<prefix>:<value>``) as identifiers: the prefix names the field."""
    out: dict[str, str] = {}
    for record in records:
        prefix, _, value = record.partition(":")
        out.setdefault(prefix, value)
    return out


def members_event(
    kind: str,
    audience: AudienceRef,
    batch: MemberBatch,
    batch_id: str,
    *,
    pii: Pii,
    send_keys: bool,
) -> dict[str, Any]:
    """``members_entered`` / ``members_changed`` from the batch's columns. Under ``hashed``
    the value columns hold exactly the record strings' hashes; a batch given without value
    columns (test seeding) falls back to the records."""
    fields = list(batch.values)
    columns = [batch.values[f] for f in fields]
    attr_fields = list(batch.attributes)
    attr_columns = [batch.attributes[f] for f in attr_fields]
    members = []
    for i, key in enumerate(batch.keys):
        identifiers: dict[str, str] = {
            f: v for f, col in zip(fields, columns, strict=True) if (v := col[i])
        }
        if not identifiers and pii == "hashed":
            identifiers = _recorded(batch.records[i])
        member: dict[str, Any] = {"key": key} if send_keys else {}
        member["identifiers"] = identifiers
        member["attributes"] = {
            f: json_value(col[i]) for f, col in zip(attr_fields, attr_columns, strict=True)
        }
        members.append(member)
    return {**_head(kind, audience, batch_id, pii), "members": members}


def removal_event(
    audience: AudienceRef, batch: RemovalBatch, batch_id: str, *, pii: Pii, send_keys: bool
) -> dict[str, Any]:
    """``members_left``: each member's recorded (hashed) identifiers. A member recorded with
    two values of one type (its old and new e-mail, when the answer to the update that sent
    the new one was lost) is listed once per value, so a receiver matching by identifier
    removes both."""
    members = []
    for key, identifiers in batch.value_rows():
        member: dict[str, Any] = {"key": key} if send_keys else {}
        member["identifiers"] = identifiers
        members.append(member)
    return {**_head(LEFT, audience, batch_id, pii), "members": members}


def json_value(value: Any) -> Any:
    """A source value as JSON: dates and times in ISO 8601, decimals as fixed-point strings
    (no precision lost), non-finite numbers by name (``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``: JSON has none, and null is NULL's), anything else unknown as its
    string."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f") if value.is_finite() else _non_finite(float(value))
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if type(value).__name__ == "MonthDayNano":  # an INTERVAL, as Arrow gives it
        return iso_duration(*value)
    if isinstance(value, bytes | bytearray | memoryview):  # a BLOB: base64, as JSON has no bytes
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _non_finite(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """An interval as ISO 8601 (``P1Y2M3DT4H5M6.5S``; ``PT0S`` when empty); each part keeps
    its sign, as an interval's parts may differ in sign."""
    years, months = divmod(months, 12) if months >= 0 else (-(-months // 12), -(-months % 12))
    seconds_total, nanos = divmod(abs(nanoseconds), 10**9)
    sign = "-" if nanoseconds < 0 else ""
    hours, rest = divmod(seconds_total, 3600)
    minutes, seconds = divmod(rest, 60)
    date = "".join(f"{n}{u}" for n, u in ((years, "Y"), (months, "M"), (days, "D")) if n)
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    time = "".join(f"{sign}{n}{u}" for n, u in ((hours, "H"), (minutes, "M")) if n) + (
        f"{sign}{seconds}{frac}S" if seconds or nanos else ""
    )
    return "P" + date + ("T" + time if time else "") if date or time else "PT0S"


def dumps(event: Mapping[str, Any]) -> str:
    """The body sent and signed: compact JSON, UTF-8 text as is."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_MEMBER = {
    "type": "object",
    "required": ["identifiers"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string"},
        "identifiers": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "attributes": {"type": "object"},
    },
    # no identifiers only for a member named by its key: one who leaves while another
    # member still holds every identifier it had (a shared inbox)
    "anyOf": [{"required": ["key"]}, {"properties": {"identifiers": {"minProperties": 1}}}],
}

#: JSON Schema (draft 2020-12) of every event this destination sends
EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "activation-reconciler webhook event, version 1",
    "type": "object",
    "required": ["version", "type", "batch_id", "audience", "pii"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": SCHEMA_VERSION},
        "type": {"enum": list(EVENT_TYPES)},
        "batch_id": {"type": "string", "minLength": 1},
        "audience": {
            "type": "object",
            "required": ["id", "name"],
            "additionalProperties": False,
            "properties": {"id": {"type": "string", "minLength": 1}, "name": {"type": "string"}},
        },
        "pii": {"enum": ["hashed", "raw"]},
        "members": {"type": "array", "items": _MEMBER},
    },
    "if": {"properties": {"type": {"const": CREATED}}},
    "then": {"not": {"required": ["members"]}},
    "else": {"required": ["members"]},
}
