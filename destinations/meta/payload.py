"""The bodies of ``/{audience_id}/users`` calls, and what Meta's answers say per member.

The engine has already normalised and hashed every value by the ``META`` rules (SHA-256
lowercase hex; ``EXTERN_ID`` and ``MADID`` as they are), so a payload is the batch's
columns put in Meta's shape:

- one field that Meta has a single-key schema for: ``{"schema": "EMAIL_SHA256", "data":
  [hash, ...]}``;
- otherwise the multi-key schema: ``{"schema": ["EMAIL", "PHONE"], "data": [[hash, ""],
  ...]}`` with ``""`` where a member has no value.

A removal sends back the recorded strings (``<prefix>:<value>``): each prefix names one
``META`` field, and the value after it is exactly what was sent. A member recorded with two
values of one field gets a row per value, so a removal may take more than one request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from destinations.base import CallContext, MemberBatch, Outcome, RemovalBatch
from destinations.identity import META
from destinations.identity.rules import Hash
from reconciler.errors import TransientError

__all__ = [
    "SINGLE_KEY",
    "Payload",
    "addition",
    "outcome",
    "removals",
    "session",
]

#: multi-key field -> Meta's single-key schema name for it
SINGLE_KEY: Mapping[str, str] = {
    "EMAIL": "EMAIL_SHA256",
    "PHONE": "PHONE_SHA256",
    "MADID": "MOBILE_ADVERTISER_ID",
}
#: record prefix -> META field, and META's field order
_FIELD_OF_PREFIX: Mapping[str, str] = {e.prefix: e.field for e in META.encodings}
_ORDER: Mapping[str, int] = {e.field: i for i, e in enumerate(META.encodings)}
#: fields whose values are lowercase hex digests (the engine hashed them): JSON-safe as they
#: are, so their rows are written into the request body without a JSON encoder
_HEX_FIELDS = frozenset(e.field for e in META.encodings if e.hash is Hash.SHA256)


class _Rows(Sequence[tuple[str, ...]]):
    """Each sent key's values, built only when read (Meta sampled invalid entries)."""

    def __init__(self, build: Callable[[], list[tuple[str, ...]]], size: int):
        self._build, self._size = build, size
        self._rows: list[tuple[str, ...]] | None = None

    def _list(self) -> list[tuple[str, ...]]:
        if self._rows is None:
            self._rows = self._build()
        return self._rows

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, i):
        return self._list()[i]

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter(self._list())


@dataclass(frozen=True)
class Payload:
    """A ``payload`` object, the keys it carries (in row order), the keys left out (with
    why), and each sent key's values (to match Meta's invalid-entry samples). ``data_json``,
    when set, is ``body["data"]`` already written as JSON (the body then has no ``data``)."""

    body: dict[str, Any]
    keys: list[str]
    unsendable: dict[str, str]
    values: Sequence[tuple[str, ...]]
    data_json: str | None = None

    def request_body(self, session: Mapping[str, Any]) -> bytes:
        """The ``/users`` request body (``payload`` and ``session``) as JSON bytes."""
        if self.data_json is None:
            return json.dumps({"payload": self.body, "session": session}).encode()
        head = json.dumps(self.body)[:-1]  # the payload object without its closing brace
        sep = ", " if self.body else ""
        text = f'{{"payload": {head}{sep}"data": {self.data_json}}}, "session": {json.dumps(session)}}}'
        return text.encode()


def _schema(fields: Sequence[str]) -> str | list[str]:
    """The ``schema`` of a payload: Meta's single-key name for one field that has one (its
    ``data`` is then a list of values), else the multi-key list of fields (rows of values)."""
    if len(fields) == 1 and fields[0] in SINGLE_KEY:
        return SINGLE_KEY[fields[0]]
    return list(fields)


def _rows_of(columns: list[list[str]]) -> list[tuple[str, ...]]:
    return list(zip(*columns, strict=True)) if columns else []


def _shape(
    fields: Sequence[str], rows: list[tuple[str, ...]], columns: list[list[str]] | None = None
) -> dict[str, Any]:
    """Meta's ``payload`` object; ``columns`` (the rows' cells per field), when given, spare
    the single-key schema a pass over the rows."""
    schema = _schema(fields)
    if isinstance(schema, str):
        data = columns[0] if columns is not None else [row[0] for row in rows]
        return {"schema": schema, "data": data}
    return {"schema": schema, "data": list(map(list, rows))}


def addition(fields: Sequence[str], batch: MemberBatch) -> Payload:
    """The payload adding ``batch``: one row per member with any value."""
    if batch.table is not None:
        return _addition_from_table(fields, batch.table)
    columns = [batch.values.get(f) or [None] * len(batch) for f in fields]
    keys, rows, unsendable = [], [], {}
    for key, *cells in zip(batch.keys, *columns, strict=True):
        row = tuple(c or "" for c in cells)
        if any(row):
            keys.append(key)
            rows.append(row)
        else:
            unsendable[key] = "no identifier Meta matches on"
    return Payload(_shape(fields, rows), keys, unsendable, rows)


def _addition_from_table(fields: Sequence[str], table: Any) -> Payload:
    """:func:`addition` over the engine's Arrow batch: the rows with a value are picked and
    the empty cells filled by Arrow; when every field is a hex digest (JSON-safe as it is)
    Arrow also writes the rows' JSON, so no Python object is made per member."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    columns = [
        table.column(f"value:{f}")
        if f"value:{f}" in table.column_names
        else pa.nulls(n, pa.string())
        for f in fields
    ]
    # a type with no column in the source is an all-NULL column of some other type
    cells = [pc.fill_null(c.cast(pa.string()), "") for c in columns]
    usable = pa.array([False] * n) if not cells else None
    for c in cells:
        has = pc.not_equal(c, "")
        usable = has if usable is None else pc.or_(usable, has)
    keys = table.column("key")
    unsendable = {
        k: "no identifier Meta matches on" for k in pc.filter(keys, pc.invert(usable)).to_pylist()
    }
    sent = [pc.filter(c, usable) for c in cells]
    sent_keys = pc.filter(keys, usable).to_pylist()
    if not sent or not set(fields) <= _HEX_FIELDS:
        values = [c.to_pylist() for c in sent]
        rows = _rows_of(values)
        return Payload(_shape(fields, rows, values), sent_keys, unsendable, rows)
    # hex digests only: the rows are written as JSON by Arrow, no Python object per member
    schema = _schema(fields)
    quoted = [pc.binary_join_element_wise('"', c, '"', "") for c in sent]
    if isinstance(schema, str):  # single-key: a list of values
        cells_json = quoted[0]
    else:  # multi-key: a list of rows
        row = pc.binary_join_element_wise(*quoted, ", ")
        cells_json = pc.binary_join_element_wise("[", row, "]", "")
    data = "[" + ", ".join(cells_json.to_pylist()) + "]"
    lazy = _Rows(lambda: _rows_of([c.to_pylist() for c in sent]), len(sent_keys))
    return Payload({"schema": schema}, sent_keys, unsendable, lazy, data)


def removals(batch: RemovalBatch, size: int) -> list[Payload]:
    """The payloads removing ``batch``, each of at most ``size`` rows: each member's recorded
    strings as one row, or one row per value where a member was recorded with several values
    of one field (see :meth:`RemovalBatch.value_rows`). A payload's ``keys`` name a member
    once per row; the first payload carries the members left out."""
    per_row: list[tuple[str, dict[str, str]]] = []
    sendable: set[str] = set()
    for key, recorded in batch.value_rows():
        cells = {
            _FIELD_OF_PREFIX[prefix]: value
            for prefix, value in recorded.items()
            if prefix in _FIELD_OF_PREFIX
        }
        if cells:
            per_row.append((key, cells))
            sendable.add(key)
    unsendable = {
        key: "its recorded identifiers are not ones Meta matches on"
        for key in batch.keys
        if key not in sendable
    }
    fields = sorted({f for _, cells in per_row for f in cells}, key=_ORDER.__getitem__)
    out = []
    for start in range(0, max(len(per_row), 1), size):
        chunk = per_row[start : start + size]
        rows = [tuple(cells.get(f, "") for f in fields) for _, cells in chunk]
        left_out = unsendable if start == 0 else {}
        out.append(Payload(_shape(fields, rows), [k for k, _ in chunk], left_out, rows))
    return out


def session(call: CallContext) -> dict[str, Any]:
    """Meta's ``session`` object for one call.

    A call the engine marks as a whole session by itself (``seq`` 1 and ``last``) gets a
    session id of its own, derived from the engine's session id and the call's idempotency
    key: stable when that very call is retried (Meta then de-duplicates the batch), and
    never reused by another call (Meta would take a second "batch 1" of a finished session
    for a repeat)."""
    session_id = call.session_id
    if call.seq == 1 and call.last:
        mixed = f"{call.session_id}:{call.batch_id}".encode()
        session_id = int.from_bytes(hashlib.sha256(mixed).digest()[:7], "big") >> 3 or 1
    out: dict[str, Any] = {
        "session_id": session_id,
        "batch_seq": call.seq,
        "last_batch_flag": call.last,
    }
    if call.estimated_total is not None:
        out["estimated_num_total"] = call.estimated_total
    return out


def _samples(answer: Mapping[str, Any]) -> dict[str, str]:
    """``invalid_entry_samples`` as value -> reason (Meta sends an object; a list is read as
    values without reasons; a row sample counts for each of its cells)."""
    raw = answer.get("invalid_entry_samples")
    items: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(v, None) for v in raw]
    else:
        return {}
    out: dict[str, str] = {}
    for sample, reason in items:
        cells = sample if isinstance(sample, list) else [sample]
        for cell in cells:
            if isinstance(cell, str) and cell:
                out.setdefault(cell, str(reason) if reason else "invalid entry")
    return out


def outcome(answer: Mapping[str, Any], payload: Payload, verb: str) -> Outcome:
    """Per-member outcome of a ``/users`` answer: members whose values Meta sampled as
    invalid are rejected (with Meta's reason), the others accepted; ``detail`` counts."""
    received = answer.get("num_received")
    if not isinstance(received, int):  # not Meta's answer to /users: nothing says it took them
        raise TransientError(
            f"Meta answered the {verb} call without num_received (it says nothing about the "
            "members); sent again"
        )
    invalid = answer.get("num_invalid_entries") or 0
    samples = _samples(answer)
    rejected = dict(payload.unsendable)
    if samples:
        for key, row in zip(payload.keys, payload.values, strict=True):
            hit = next((samples[c] for c in row if c in samples), None)
            if hit is not None:
                rejected[key] = f"Meta counted the entry invalid: {hit}"
    detail = f"Meta {verb} {received} entries"
    unnamed = 0
    if invalid:
        named = len(rejected) - len(payload.unsendable)
        detail += f", {invalid} invalid ({named} identified from Meta's samples)"
        unnamed = max(0, int(invalid) - named)
    return Outcome(rejected=rejected, detail=detail, unidentified=unnamed)
