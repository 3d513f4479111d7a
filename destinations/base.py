"""The Destination protocol (v2) every adapter implements, and the values it exchanges.

The engine talks to destinations only through this module: it never names one. An adapter
is found by its ``type`` through the ``reconciler.destinations`` entry-point group (see
:func:`destinations.registry.load`) and built as ``cls(config, credentials, context,
client)``; construction does no I/O.

Designed against every vendor we speak (see ``docs/destinations.md``):

- **Batches travel as columns.** The engine normalises and encodes identifiers in SQL, by
  the rules the adapter declares (:attr:`Destination.identity`: a
  :class:`~destinations.identity.RuleSet` and the identifier types it accepts), and hands a
  :class:`MemberBatch`: keys, one column of values per encoding (a SHA-256 hex, an MD5, or a
  normalised raw value where the rules say so), the record strings per member and one
  column per mapped attribute. An adapter builds its payload from the columns without a
  per-member Python object (Meta's multi-key rows are ``zip`` of columns).
- **Removal sends what was recorded**: a :class:`RemovalBatch` carries each member's record
  strings (``<prefix>:<hash>``), exactly as recorded when it was sent.
- **Per-member outcomes**: everything in a call is accepted unless :class:`Outcome` says a
  key was ``rejected`` (permanent, with the reason: recorded and not re-sent every run) or
  must ``retry`` (next run). A destination that keeps its own member ids returns them in
  ``ids`` to be recorded instead of the hashes.
- **Limits per operation** (:class:`Limits`): members and identifiers per call, requests per
  minute, concurrent requests. **Sessions** (Meta): :class:`CallContext` carries a session id
  stable for one audience and operation in one run, the batch's sequence number, whether it
  is the last, and the estimated total. **Asynchronous jobs** (Klaviyo bulk import): a call
  may answer ``Outcome(job=...)``; the engine journals the job as submitted and calls
  :meth:`Destination.poll` until it is done — after a crash too, never resubmitting.
- **Bulk export** (files): a destination with ``capabilities.export`` also implements
  :class:`FileExport`: the engine hands it a DuckDB connection and a query, and the adapter
  writes the query's result as one file with DuckDB ``COPY`` (no row passes through Python).
- **Typed errors** (``reconciler.errors``): :class:`ThrottledError` and
  :class:`TransientError` are retried by the engine's policy; :class:`CredentialsRefused`
  marks the activation Disabled; :class:`AudienceGone` says the audience was deleted at the
  destination (the next plan recreates it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import duckdb
from pydantic import BaseModel, ConfigDict

from destinations.columns import LazyColumn, RecordColumn
from destinations.identity import Encoding, RuleSet
from destinations.redaction import PROCESS_REDACTOR, Credentials, member_reason
from destinations.retry import RetryPolicy

if TYPE_CHECKING:  # httpx is loaded by the adapters that speak HTTP, not by every command
    import httpx

from reconciler.errors import (
    AudienceGone,
    ConfigError,
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

__all__ = [
    "AudienceGone",
    "AudienceRef",
    "CallContext",
    "Capabilities",
    "Credentials",
    "CredentialsRefused",
    "Destination",
    "DestinationConfig",
    "DestinationContext",
    "DestinationError",
    "DestinationFactory",
    "ExportRequest",
    "ExportedFile",
    "FileExport",
    "Identity",
    "JobStatus",
    "LazyColumn",
    "Limits",
    "MemberBatch",
    "NoCredentials",
    "Outcome",
    "RecordColumn",
    "RemovalBatch",
    "TerminalError",
    "ThrottledError",
    "TransientError",
]


class DestinationConfig(BaseModel):
    """Base of each adapter's validated ``config:`` block (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoCredentials(Credentials):
    """For destinations that need none (the sandbox, local files). Credentials are a
    :class:`destinations.redaction.Credentials`: ``SecretStr`` fields, printed redacted and
    registered for redaction of every log line and error message."""


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do; an activation asking for more fails validation."""

    remove: bool = True  # members can be removed (maintain, action: remove)
    update: bool = False  # attributes change in place (else: remove old + add new)
    rename: bool = False  # an audience can be renamed
    attributes: bool = False  # mapped attributes are sent
    create: bool = True  # audiences can be created
    refresh: bool = True  # one audience can be read back (drift detection)
    export: bool = False  # writes audiences as files (`goal: export_data`, :class:`FileExport`)


@dataclass(frozen=True)
class Limits:
    """Per-operation limits from the vendor's contract."""

    members_per_call: int = 1000
    identifiers_per_member: int | None = None
    requests_per_minute: float | None = None
    concurrency: int = 1


@dataclass(frozen=True)
class Identity:
    """Which identifier types a destination matches on (in its preference order) and the
    platform rules that encode them. The engine computes values and records from it in SQL."""

    rules: RuleSet
    accepted: tuple[str, ...]

    @property
    def encodings(self) -> tuple[Encoding, ...]:
        """The encodings sent, in ``accepted`` order then rule order (the batch's columns)."""
        return tuple(e for name in self.accepted for e in self.rules.for_identifier(name))


@dataclass(frozen=True)
class AudienceRef:
    """An audience (list, segment, tag) at a destination. ``size`` is informational (platforms
    report approximate, delayed sizes)."""

    id: str
    name: str
    size: int | None = None


@dataclass(frozen=True)
class MemberBatch:
    """Members to add or update, as columns of equal length.

    ``values`` maps each encoding's ``field`` to its column (``None`` where the member has no
    usable value of that type); ``records`` are the strings the engine records for each
    member if accepted (never empty: a member with no usable identifier is never sent);
    ``attributes`` maps destination field to column."""

    keys: Sequence[str]
    values: Mapping[str, Sequence[str | None]]
    records: Sequence[Sequence[str]]
    attributes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    #: the same batch as an Arrow table, when the engine read it so (``None`` otherwise):
    #: columns ``key``, ``records`` (list of strings), ``value:<field>`` per encoding field
    #: and ``attr:<field>`` per attribute. An adapter that hands the batch to a database
    #: (the sandbox) or encodes it in bulk reads this and no Python object per member.
    table: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class RemovalBatch:
    """Members to remove: each with the record strings recorded when it was sent.
    ``stale``: the members stay; only these identifiers of theirs go (their e-mail or phone
    changed), so a destination holding members by key must not drop the members."""

    keys: Sequence[str]
    records: Sequence[Sequence[str]]
    stale: bool = False

    def __len__(self) -> int:
        return len(self.keys)

    def value_rows(self) -> list[tuple[str, dict[str, str]]]:
        """The members' record strings (``<prefix>:<value>``) as ``(key, {prefix: value})``
        rows, for destinations whose removal entry holds one value per identifier type.

        A member recorded with two values of one type (the old and the new e-mail of an
        update whose answer was lost, or a stale e-mail the destination once refused to
        remove) gets a row per value, so every value recorded is removed. Each member's
        first row comes first, in the batch's order; the extra rows follow, so a caller that
        must split a call keeps the members' main rows together."""
        first: list[tuple[str, dict[str, str]]] = []
        extra: list[tuple[str, dict[str, str]]] = []
        for key, records in zip(self.keys, self.records, strict=True):
            rows: list[dict[str, str]] = []
            seen: set[tuple[str, str]] = set()
            for record in records:
                prefix, _, value = record.partition(":")
                if not value or (prefix, value) in seen:
                    continue
                seen.add((prefix, value))
                row = next((r for r in rows if prefix not in r), None)
                if row is None:
                    row = {}
                    rows.append(row)
                row[prefix] = value
            if rows:
                first.append((key, rows[0]))
                extra.extend((key, r) for r in rows[1:])
            else:
                first.append((key, {}))
        return first + extra


@dataclass(frozen=True)
class CallContext:
    """One destination call: ``batch_id`` is its idempotency key (fresh per journaled call,
    the same on retries of that call); ``session_id`` is stable for one audience and
    operation within a run (a positive 53-bit integer, for Meta's sessions); ``seq`` counts
    the batches of that session from 1; ``last`` marks its final batch."""

    batch_id: str
    session_id: int = 1
    seq: int = 1
    last: bool = True
    estimated_total: int | None = None


@dataclass
class Outcome:
    """What the destination answered for one call. Keys not in ``rejected`` or ``retry`` were
    accepted. ``rejected``: refused for good, with the reason (recorded as rejected, not
    re-sent until the member's identifiers or attributes change); ``retry``: not taken now,
    sent again by the next run. ``ids``: the destination's own member ids to record instead
    of the hashes (Klaviyo profile ids). ``job``: an asynchronous job the call submitted
    (then :meth:`Destination.poll` gives the final outcome). ``detail``: a short summary for
    the run log (e.g. Meta's ``num_invalid_entries``). ``unidentified``: entries the
    destination counted as refused without naming them (Meta's ``num_invalid_entries`` beyond
    its samples): their members stay recorded as accepted (which ones is unknown), but they
    count as refused against ``max_rejected_share`` and the run says so."""

    rejected: dict[str, str] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)
    ids: dict[str, tuple[str, ...]] = field(default_factory=dict)
    job: str | None = None
    detail: str | None = None
    unidentified: int = 0

    def __post_init__(self) -> None:
        # reasons and the summary are printed, recorded and sent in notifications: a vendor
        # may echo a member's e-mail or phone in them (redaction.member_reason)
        self.rejected = {k: member_reason(v) for k, v in self.rejected.items()}
        self.retry = {k: member_reason(v) for k, v in self.retry.items()}
        if self.detail is not None:
            self.detail = PROCESS_REDACTOR(self.detail)


@dataclass
class JobStatus:
    """An asynchronous job: ``done`` with its ``outcome``, or still running."""

    done: bool
    outcome: Outcome | None = None


@runtime_checkable
class Destination(Protocol):
    """What the engine needs from a destination (see the module docstring)."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[DestinationConfig]]
    credentials_model: ClassVar[type[Credentials]]
    capabilities: Capabilities
    limits: Limits
    identity: Identity
    #: how the engine retries this destination's calls (a fast one for local destinations)
    retry_policy: RetryPolicy
    # Optional, not part of the protocol (the engine reads it with a default of False):
    # ``members_by_key: bool``, the destination holds members by their profile key (a
    # webhook receiver sent the keys), not only by identifier. A member who leaves is then
    # removed by key even when another member still holds every identifier it had (a shared
    # inbox): its removal is sent with no identifiers rather than skipped.
    # ``creation_settles: bool`` (default True): a creation whose answer was lost may still
    # appear at the destination seconds later, so the engine looks it up a few times before
    # creating again; False for a destination whose lookup can only find what this process
    # recorded (a webhook's registry): waiting could never find more.

    def list_audiences(self) -> list[AudienceRef]:
        """Every audience the account has (``reconcile lists``)."""
        ...

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        """The audience with this id, else one with exactly this name, else None."""
        ...

    def read_audience(self, audience: AudienceRef) -> AudienceRef | None:
        """The audience as the destination has it now (name, size), or None when it was
        deleted there (drift)."""
        ...

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """A new empty audience. The engine journals ``idempotency_key`` (fresh for every
        creation) before calling; where the vendor allows, it is stored with the audience
        (e.g. in its description) so :meth:`find_created_audience` can find it."""
        ...

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        """The audience ``create_audience(name, idempotency_key=...)`` made, if that call
        reached the destination; None otherwise. Found by the key itself (or the name *and*
        evidence of this very creation) — never merely by the name."""
        ...

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef: ...

    def add(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome: ...

    def update(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        """Change attributes in place (only with ``capabilities.update``)."""
        ...

    def remove(self, audience: AudienceRef, batch: RemovalBatch, call: CallContext) -> Outcome: ...

    def poll(self, job: str) -> JobStatus:
        """The state of an asynchronous job this destination submitted."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ExportRequest:
    """One file to write: ``kind`` is ``delta`` or ``full``; ``path`` is the activation's
    export path relative to the destination's location (checked by validation, checked
    again by the adapter); ``stamp`` names the file and is the same when an interrupted
    export is written again, so a rerun replaces its file instead of adding a second one."""

    activation: str
    path: str
    kind: str
    stamp: str
    as_of: datetime
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportedFile:
    """A file written and made visible: where, how many rows, its SHA-256."""

    url: str
    rows: int
    sha256: str
    manifest: str


@runtime_checkable
class FileExport(Protocol):
    """The bulk-export side of a destination with ``capabilities.export``."""

    def export_location(self, path: str) -> str:
        """Where the files of export path ``path`` go (for the plan; no I/O)."""
        ...

    def export_format(self) -> str:
        """The files' format (``csv``, ``parquet``): a change starts a new series of files,
        with a full one (for the plan; no I/O)."""
        ...

    def write_export(
        self, con: duckdb.DuckDBPyConnection, query: str, request: ExportRequest
    ) -> ExportedFile:
        """Write ``query``'s rows as one file with DuckDB ``COPY`` on ``con``, atomically:
        no half-written file ever exists under its final name; then its manifest."""
        ...


@dataclass(frozen=True)
class DestinationContext:
    """Workspace facts an adapter may need: where relative paths start, the default country
    for phone numbers without a country code (ISO 3166 alpha-2), and the integration's
    ``endpoint`` override (a proxy or a test server; plain HTTP only to loopback)."""

    root: Path
    default_phone_country: str = "US"
    endpoint: str | None = None
    integration: str = ""

    def check_phone_country(self, accepted: Sequence[str]) -> None:
        """Refuse an unknown default phone country when the adapter accepts phones."""
        from destinations.identity.phones import country_rules

        if "phone" in accepted:
            try:
                country_rules(self.default_phone_country)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc


class DestinationFactory(Protocol):
    """The class an entry point names: ``cls(config, credentials, context, client)``.
    ``client`` is an ``httpx.Client`` made by ``destinations.http.make_client`` for HTTP
    adapters (tests pass one pointed at a fake server), None for local ones."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[DestinationConfig]]
    credentials_model: ClassVar[type[Credentials]]

    def __call__(
        self,
        config: DestinationConfig,
        credentials: Credentials,
        context: DestinationContext,
        client: httpx.Client | None,
    ) -> Destination: ...
