"""The Destination protocol every adapter implements, and the values it exchanges.

The engine talks to destinations only through this module: it never names one. An adapter
is found by its ``type`` through the ``reconciler.destinations`` entry-point group
(see :func:`destinations.registry.load`).

A member travels as a :class:`Member`: the engine hands over the profile's raw identifiers
(normalised and hashed by the adapter with ``destinations.identity``) and mapped attributes;
the adapter answers, per member, the *record*: the strings it actually sent (hashes) or the
destination's own member id. The engine keeps records in the state (never raw PII) and
removal sends exactly what was recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from reconciler.errors import (
    CredentialsRefused,
    DestinationError,
    TerminalError,
    ThrottledError,
    TransientError,
)

__all__ = [
    "AudienceRef",
    "BatchResult",
    "CredentialsRefused",
    "Destination",
    "DestinationConfig",
    "DestinationContext",
    "DestinationFactory",
    "DestinationError",
    "Member",
    "RemovalRecord",
    "TerminalError",
    "ThrottledError",
    "TransientError",
]


class DestinationConfig(BaseModel):
    """Base of each adapter's validated ``config:`` block (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class AudienceRef:
    """An audience (list, segment, tag) at a destination."""

    id: str
    name: str
    size: int | None = None


@dataclass(frozen=True)
class Member:
    """One profile to send. ``identifiers`` are raw (``{"email": ..., "phone": ...}``, values
    may be None); ``attributes`` are destination field -> value, already mapped."""

    key: str
    identifiers: Mapping[str, str | None]
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemovalRecord:
    """A member to remove, as recorded when it was sent: ``record`` is exactly what the
    adapter returned for it then (e.g. ``["email_sha256:ab12..", "phone_sha256:..."]``)."""

    key: str
    record: tuple[str, ...]


@dataclass
class BatchResult:
    """What the destination confirmed for one batch.

    ``records`` maps every *accepted* member key to the strings to keep for it; keys absent
    from ``records`` and present in ``failed`` were refused (with the destination's reason)
    and are never recorded as sent. ``detail`` is a short human summary of the answer
    (e.g. Meta's ``num_invalid_entries``), shown in the run log."""

    records: dict[str, tuple[str, ...]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    #: keys accepted but not sendable: no identifier the destination takes survived
    #: normalisation. The engine records them with an empty record (so they are not re-sent
    #: every run) and counts them as unmatched.
    unmatched: list[str] = field(default_factory=list)
    detail: str | None = None


@runtime_checkable
class Destination(Protocol):
    """What the engine needs from a destination. Calls may raise the typed
    :class:`DestinationError` subclasses; :class:`ThrottledError` and :class:`TransientError`
    are retried by the engine, :class:`CredentialsRefused` marks the activation Disabled."""

    #: the ``type:`` of integrations served by this adapter
    type_name: ClassVar[str]
    #: pydantic model of the integration's ``config:`` block
    config_model: ClassVar[type[DestinationConfig]]
    #: identifier types the destination matches on, in preference order (an instance
    #: attribute: some adapters take it from their config). Construction does no I/O.
    accepted_identifiers: tuple[str, ...]
    #: whether ``update_members`` changes attributes in place (else remove-old + add-new)
    supports_update: ClassVar[bool]

    #: members per add/remove/update call
    batch_size: int

    def list_audiences(self) -> list[AudienceRef]: ...

    def records_for(self, members: Sequence[Member]) -> dict[str, tuple[str, ...]]:
        """What this destination would send for each member (normalised, hashed), without
        sending anything: used by ``action: remove`` for profiles never sent by us."""
        ...

    def find_audience(self, id_or_name: str) -> AudienceRef | None: ...

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """A new empty audience. The engine journals ``idempotency_key`` (fresh for every
        creation) before calling; a destination that supports it makes a repeated call with
        the same key return the audience made the first time."""
        ...

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        """The audience that ``create_audience(name, idempotency_key=...)`` made, if that call
        reached the destination; None otherwise. Used after a crash between journaling a
        creation and recording its answer. It must find the audience by the key itself (or by
        the name *and* evidence of this very creation, e.g. the key in its description) —
        never merely an audience of that name, which may belong to someone else."""
        ...

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef: ...

    def add_members(
        self, audience: AudienceRef, members: Sequence[Member], *, idempotency_key: str
    ) -> BatchResult: ...

    def update_members(
        self, audience: AudienceRef, members: Sequence[Member], *, idempotency_key: str
    ) -> BatchResult: ...

    def remove_members(
        self, audience: AudienceRef, members: Sequence[RemovalRecord], *, idempotency_key: str
    ) -> BatchResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DestinationContext:
    """Workspace facts an adapter may need: where relative paths start, and the default
    country for phone numbers written without a country code (ISO 3166 alpha-2)."""

    root: Path
    default_phone_country: str = "US"


class DestinationFactory(Protocol):
    """The class an entry point names: ``cls(config, credentials, endpoint, context)``.
    ``credentials`` are already resolved from the environment; construction does no I/O."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[DestinationConfig]]

    def __call__(
        self,
        config: DestinationConfig,
        credentials: Mapping[str, str],
        endpoint: str | None,
        context: DestinationContext,
    ) -> Destination: ...
