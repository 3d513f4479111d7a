"""The local ``sandbox`` destination: audiences in a DuckDB file you can open and inspect.

The embedded default of the example workspace and the test double of last resort. Like dlt's
dummy destination it has failure knobs (one RNG, ``seed``) for testing journaling and recovery:

    transient_error_rate  a write call raises TransientError before writing anything
    throttle_rate         a write call raises ThrottledError(retry_after=0.01) before writing
    lost_ack_rate         a write call is applied, then raises TransientError (lost answer)
    reject_rate           each member of a member call is refused, with a reason in ``failed``
    reject_add_keys       members with these profile keys are refused by every add and update
    reject_remove_keys    members with these profile keys are refused by every remove
    exit_after_calls      the process ends with ``os._exit(137)`` at its N-th write call ...
    exit_when             ... ``before`` applying it, or ``after`` applying it and before
                          answering (a kill between intent and outcome); counted per adapter
    refuse_credentials    every call raises CredentialsRefused
    delay_per_batch       seconds slept before every create and member call

Write calls: create, rename, add, update, remove. Each call is one DuckDB transaction, so a
kill mid-call leaves it applied or not. Tables (``duckdb .reconcile/sandbox.duckdb``)::

    audiences(id, name, created_at)
    members(audience_id, match_key, attributes JSON, updated_at)   one row per record string
    requests(idempotency_key, op, audience_id, at)                 every write call's key

A member sent with e-mail and phone is two rows; an audience's ``size`` is its number of rows
(match keys), not of people. :func:`open_store` reads a sandbox file without the adapter.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import duckdb
from pydantic import Field

from destinations.base import (
    AudienceRef,
    BatchResult,
    DestinationConfig,
    DestinationContext,
    Member,
    RemovalRecord,
)
from destinations.identity import COUNTRIES, hashed_identifiers
from reconciler import errors

__all__ = ["SandboxConfig", "SandboxDestination", "SandboxStore", "open_store"]

_T = TypeVar("_T")
_Call = Callable[[duckdb.DuckDBPyConnection], _T]
_Rate = Annotated[float, Field(ge=0.0, le=1.0)]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audiences (
    id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    audience_id VARCHAR NOT NULL, match_key VARCHAR NOT NULL, attributes JSON,
    updated_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    idempotency_key VARCHAR PRIMARY KEY, op VARCHAR NOT NULL, audience_id VARCHAR,
    "at" TIMESTAMP NOT NULL);
"""
_AUDIENCES = """
SELECT a.id, a.name, count(m.match_key) FROM audiences a
LEFT JOIN members m ON m.audience_id = a.id
WHERE {where} GROUP BY a.id, a.name, a.created_at, a.rowid
ORDER BY a.created_at {order}, a.rowid {order} LIMIT {limit}
"""
# No primary key on members: an index over tens of millions of match keys would have to sit
# in memory (DuckDB cannot spill it). An upsert is a delete of the batch's keys, then an
# insert, in one transaction; (audience_id, match_key) stays unique because every write
# goes through it.
_UNSET = (
    "DELETE FROM members WHERE audience_id = $audience "
    "AND match_key IN (SELECT unnest($keys::VARCHAR[]))"
)
_UPSERT = (
    "INSERT INTO members SELECT $audience, k, a::JSON, $now "
    "FROM (SELECT unnest($keys) AS k, unnest($attributes) AS a)"
)
_DELETE = "DELETE FROM members WHERE audience_id = ? AND match_key IN (SELECT unnest(?::VARCHAR[]))"
_LOG = "INSERT INTO requests VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"


class SandboxConfig(DestinationConfig):
    """The ``config:`` block of a ``type: sandbox`` integration."""

    path: str = ".reconcile/sandbox.duckdb"
    identifiers: list[Literal["email", "phone"]] = Field(
        default_factory=lambda: ["email", "phone"], min_length=1
    )
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    delay_per_batch: float = Field(default=0.0, ge=0.0)
    transient_error_rate: _Rate = 0.0
    throttle_rate: _Rate = 0.0
    lost_ack_rate: _Rate = 0.0
    reject_rate: _Rate = 0.0
    reject_add_keys: list[str] = Field(default_factory=list)
    reject_remove_keys: list[str] = Field(default_factory=list)
    exit_after_calls: int | None = Field(default=None, ge=1)
    exit_when: Literal["before", "after"] = "before"
    refuse_credentials: bool = False
    seed: int | None = None


class SandboxDestination:
    """A :class:`~destinations.base.Destination` kept in a local DuckDB file."""

    type_name: ClassVar[str] = "sandbox"
    config_model: ClassVar[type[DestinationConfig]] = SandboxConfig
    supports_update: ClassVar[bool] = True

    def __init__(
        self,
        config: DestinationConfig,
        credentials: Mapping[str, str],
        endpoint: str | None,
        context: DestinationContext,
    ) -> None:
        """No I/O: the file is opened on the first call. Credentials and endpoint are unused."""
        self.config = config = SandboxConfig.model_validate(config.model_dump())
        self.context = context
        self.accepted_identifiers: tuple[str, ...] = tuple(dict.fromkeys(config.identifiers))
        if "phone" in self.accepted_identifiers and (
            context.default_phone_country.upper() not in COUNTRIES
        ):
            raise errors.ConfigError(
                f"unknown default phone country {context.default_phone_country!r}; "
                f"use one of {', '.join(sorted(COUNTRIES))}"
            )
        self.batch_size = config.batch_size
        path = Path(config.path).expanduser()
        self.path = path if path.is_absolute() else Path(context.root) / path
        self._rng = random.Random(config.seed)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writes = 0  # write calls made, for exit_after_calls

    # -- the Destination protocol ------------------------------------------------------------

    def list_audiences(self) -> list[AudienceRef]:
        if self._absent():
            return []
        return _transaction(self._connection(), _audiences)

    def records_for(self, members: Sequence[Member]) -> dict[str, tuple[str, ...]]:
        """Each member's record strings (empty when nothing is usable); no I/O, no knobs."""
        accepted, country = self.accepted_identifiers, self.context.default_phone_country
        return {m.key: hashed_identifiers(m.identifiers, accepted, country) for m in members}

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        """The audience with this id, else the newest one with exactly this name."""

        def find(con: duckdb.DuckDBPyConnection) -> list[AudienceRef]:
            by_id = _audiences(con, "a.id = $v", v=id_or_name)
            return by_id or _audiences(con, "a.name = $v", newest=True, v=id_or_name)

        if self._absent():
            return None
        found = _transaction(self._connection(), find)
        return found[0] if found else None

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        """The audience a create call with this key made (the ``requests`` log), or None."""

        def find(con: duckdb.DuckDBPyConnection) -> AudienceRef | None:
            sql = "SELECT audience_id FROM requests WHERE idempotency_key = ? AND op = 'create'"
            row = con.execute(sql, [idempotency_key]).fetchone()
            found = _audiences(con, "a.id = $v", v=row[0]) if row else []
            return found[0] if found else None

        if self._absent():
            return None
        return _transaction(self._connection(), find)

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """A new empty audience; a key seen before returns the audience it created then."""

        def create(con: duckdb.DuckDBPyConnection) -> AudienceRef:
            sql = "SELECT op, audience_id FROM requests WHERE idempotency_key = ?"
            seen = con.execute(sql, [idempotency_key]).fetchone()
            if seen is not None and seen[0] != "create":
                raise errors.TerminalError(
                    f"idempotency key {idempotency_key!r} was used for {seen[0]}"
                )
            if seen is not None:
                return _require(con, seen[1])
            audience_id = "sbx_" + secrets.token_hex(5)
            con.execute("INSERT INTO audiences VALUES (?, ?, ?)", [audience_id, name, _now()])
            con.execute(_LOG, [idempotency_key, "create", audience_id, _now()])
            return AudienceRef(id=audience_id, name=name, size=0)

        return self._write("create", create, delay=True)

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef:
        def rename(con: duckdb.DuckDBPyConnection) -> AudienceRef:
            _require(con, audience.id)
            con.execute("UPDATE audiences SET name = ? WHERE id = ?", [name, audience.id])
            return _audiences(con, "a.id = $v", v=audience.id)[0]

        return self._write("rename", rename)

    def add_members(
        self, audience: AudienceRef, members: Sequence[Member], *, idempotency_key: str
    ) -> BatchResult:
        """Upsert each member's record strings (one row each) with its attributes; members
        with no usable identifier come back in ``unmatched``, refused ones in ``failed``."""
        return self._upsert("add", audience, members, idempotency_key)

    def update_members(
        self, audience: AudienceRef, members: Sequence[Member], *, idempotency_key: str
    ) -> BatchResult:
        """Same as :meth:`add_members`: attributes are replaced in place."""
        return self._upsert("update", audience, members, idempotency_key)

    def remove_members(
        self, audience: AudienceRef, members: Sequence[RemovalRecord], *, idempotency_key: str
    ) -> BatchResult:
        """Delete the rows of exactly the recorded strings (absent rows are fine)."""
        failed = self._rejections([m.key for m in members], "reject_remove_keys")
        records = {m.key: m.record for m in members if m.key not in failed}
        keys = sorted({k for record in records.values() for k in record})

        def remove(con: duckdb.DuckDBPyConnection) -> BatchResult:
            _require(con, audience.id)
            gone = con.execute(_DELETE, [audience.id, keys]).fetchall()[0][0] if keys else 0
            con.execute(_LOG, [idempotency_key, "remove", audience.id, _now()])
            return BatchResult(records=records, failed=failed, detail=f"removed {gone} rows")

        return self._write("remove", remove, delay=True)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # -- internals ---------------------------------------------------------------------------

    def _upsert(
        self, op: str, audience: AudienceRef, members: Sequence[Member], idempotency_key: str
    ) -> BatchResult:
        failed = self._rejections([m.key for m in members], "reject_add_keys")
        wanted = [m for m in members if m.key not in failed]
        records: dict[str, tuple[str, ...]] = {}
        unmatched: list[str] = []
        rows: dict[str, str] = {}  # match key -> attributes JSON (a shared key: last one wins)
        for member, record in zip(wanted, self.records_for(wanted).values(), strict=True):
            if not record:
                unmatched.append(member.key)
                continue
            records[member.key] = record
            attributes = json.dumps(dict(member.attributes), sort_keys=True, default=str)
            rows.update(dict.fromkeys(record, attributes))
        detail = (
            f"{len(records)} members ({len(rows)} rows) upserted, "
            f"{len(unmatched)} unmatched, {len(failed)} refused"
        )

        def upsert(con: duckdb.DuckDBPyConnection) -> BatchResult:
            _require(con, audience.id)
            if rows:
                params = {"audience": audience.id, "keys": list(rows)}
                con.execute(_UNSET, params)
                con.execute(_UPSERT, params | {"now": _now(), "attributes": list(rows.values())})
            con.execute(_LOG, [idempotency_key, op, audience.id, _now()])
            return BatchResult(records=records, failed=failed, unmatched=unmatched, detail=detail)

        return self._write(op, upsert, delay=True)

    def _rejections(self, keys: Sequence[str], knob: str) -> dict[str, str]:
        """Refused members: the keys the ``knob`` lists always, the others at ``reject_rate``."""
        rate, reason = self.config.reject_rate, "rejected by the sandbox (reject_rate)"
        listed = set(getattr(self.config, knob))
        refused = {key: f"rejected by the sandbox ({knob})" for key in keys if key in listed}
        refused |= {
            key: reason for key in keys if key not in refused and rate and self._rng.random() < rate
        }
        return refused

    def _absent(self) -> bool:
        """No sandbox file yet: reads find nothing and create nothing (a plan writes no file)."""
        if self.config.refuse_credentials:
            self._connection()  # raises CredentialsRefused
        return self._con is None and not self.path.exists()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self.config.refuse_credentials:
            raise errors.CredentialsRefused(
                "the sandbox refused the credentials (refuse_credentials: true); "
                "set it to false in the integration's config"
            )
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path), config=dict(_DB_CONFIG))
            self._con.execute(_SCHEMA)
        return self._con

    def _write(self, op: str, fn: _Call[_T], *, delay: bool = False) -> _T:
        """Run ``fn`` in one transaction, after the knobs had their say."""
        con = self._connection()
        self._writes += 1
        exiting = self._writes == self.config.exit_after_calls
        if exiting and self.config.exit_when == "before":
            os._exit(137)
        if delay:
            time.sleep(self.config.delay_per_batch)
        transient, throttled, lost = (self._rng.random() for _ in range(3))
        if transient < self.config.transient_error_rate:
            raise errors.TransientError(
                f"sandbox {op}: simulated transient error (nothing written)"
            )
        if throttled < self.config.throttle_rate:
            raise errors.ThrottledError(f"sandbox {op}: simulated rate limit", retry_after=0.01)
        result = _transaction(con, fn)
        if exiting:  # exit_when: after
            os._exit(137)
        if lost < self.config.lost_ack_rate:
            raise errors.TransientError(
                f"sandbox {op}: simulated lost answer (the call was applied)"
            )
        return result


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _transaction(con: duckdb.DuckDBPyConnection, fn: _Call[_T]) -> _T:
    con.begin()
    try:
        result = fn(con)
    except BaseException:
        con.rollback()
        raise
    con.commit()
    return result


def _audiences(
    con: duckdb.DuckDBPyConnection, where: str = "true", newest: bool = False, **params: Any
) -> list[AudienceRef]:
    """Audiences matching ``where`` (oldest first, or only the newest), sized in rows."""
    order, limit = ("DESC", "1") if newest else ("ASC", "ALL")
    sql = _AUDIENCES.format(where=where, order=order, limit=limit)
    return [AudienceRef(id=i, name=n, size=s) for i, n, s in con.execute(sql, params).fetchall()]


def _require(con: duckdb.DuckDBPyConnection, audience_id: str) -> AudienceRef:
    """The audience (without its size: no scan of its members), or TerminalError."""
    sql = "SELECT id, name FROM audiences WHERE id = ?"
    found = [AudienceRef(id=i, name=n) for i, n in con.execute(sql, [audience_id]).fetchall()]
    if not found:
        raise errors.TerminalError(
            f"the sandbox has no audience with id {audience_id!r}; "
            "run `reconcile lists` to see the existing ones"
        )
    return found[0]


#: the sandbox stands in for a remote service: its buffers stay modest so it does not compete
#: with the engine for memory inside the apply process
_DB_CONFIG = {"memory_limit": "256MB", "threads": 1}


class SandboxStore:
    """Read-only view of a sandbox file, for tests and users. Each method opens the file
    for one query only, so it never holds a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _query(self, fn: _Call[_T]) -> _T:
        if not self.path.exists():
            raise FileNotFoundError(f"no sandbox file at {self.path}")
        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.ConnectionException:
            # this process has the file open for writing (a live SandboxDestination):
            # share that database; only SELECTs run here
            con = duckdb.connect(str(self.path), config=dict(_DB_CONFIG))
        try:
            return fn(con)
        finally:
            con.close()

    def audiences(self) -> list[AudienceRef]:
        """Every audience, oldest first, with its size in rows (match keys)."""
        return self._query(_audiences)

    def match_keys(self, audience_id: str) -> set[str]:
        """The record strings stored in an audience."""
        sql = "SELECT match_key FROM members WHERE audience_id = ?"
        return self._query(lambda con: {r[0] for r in con.execute(sql, [audience_id]).fetchall()})

    def attributes(self, audience_id: str) -> dict[str, dict[str, Any]]:
        """Match key -> the attributes stored with it."""
        sql = "SELECT match_key, attributes FROM members WHERE audience_id = ?"
        rows = self._query(lambda con: con.execute(sql, [audience_id]).fetchall())
        return {key: json.loads(value) for key, value in rows}


def open_store(path: str | Path) -> SandboxStore:
    """A read-only :class:`SandboxStore` over the sandbox file at ``path``."""
    return SandboxStore(path)
