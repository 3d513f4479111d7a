"""Test setup against a destination adapter, behind the engine's back: rows "other senders"
put into an audience, given as raw identifiers. Records are computed in Python by the same
rules the engine applies in SQL (``destinations.identity``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from destinations.base import CallContext, Destination, MemberBatch, Outcome
from destinations.identity import NormaliseContext, records


@dataclass(frozen=True)
class Member:
    """A member for test setup: its key and raw identifiers."""

    key: str
    identifiers: Mapping[str, str | None]
    attributes: Mapping[str, object] = field(default_factory=dict)


@dataclass
class Seeded:
    records: dict[str, tuple[str, ...]]
    outcome: Outcome


def seed(dest: Destination, ref, members: Sequence[Member], key: str) -> Seeded:
    """Add ``members`` to ``ref`` through the adapter's protocol-v2 ``add``."""
    context = NormaliseContext(dest.context.default_phone_country)  # type: ignore[attr-defined]
    recs = {
        m.key: records(m.identifiers, dest.identity.accepted, dest.identity.rules, context)
        for m in members
    }
    sendable = [m for m in members if recs[m.key]]
    fields = sorted({f for m in sendable for f in m.attributes})
    batch = MemberBatch(
        keys=[m.key for m in sendable],
        values={},
        records=[recs[m.key] for m in sendable],
        attributes={f: [m.attributes.get(f) for m in sendable] for f in fields},
    )
    outcome = dest.add(ref, batch, CallContext(batch_id=key))
    return Seeded({m.key: recs[m.key] for m in sendable if m.key not in outcome.rejected}, outcome)
