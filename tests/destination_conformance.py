"""The conformance suite every destination adapter passes.

Subclass :class:`DestinationConformance` in an adapter's test module and provide:

- a ``destination`` fixture yielding a fresh adapter with no knobs/failures enabled
  (against a local fake server for HTTP adapters), and
- :meth:`DestinationConformance.stored_records`: the record strings the destination
  (or its fake server) currently holds for an audience, read behind the adapter's back.

Optionally override :meth:`~DestinationConformance.stored_attributes` when the destination
keeps member attributes, and :meth:`~DestinationConformance.make_member` when it needs other
identifiers. The suite checks protocol behaviour only; failure knobs and vendor specifics
belong in the adapter's own tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from destinations.base import AudienceRef, BatchResult, Destination, Member, RemovalRecord
from reconciler.errors import TerminalError


class DestinationConformance:
    """Protocol behaviour shared by every adapter (see the module docstring)."""

    @pytest.fixture
    def destination(self) -> Iterator[Destination]:
        raise NotImplementedError("subclasses provide a `destination` fixture")

    def stored_records(self, destination: Destination, audience: AudienceRef) -> set[str]:
        """Record strings the destination holds for ``audience`` (read independently)."""
        raise NotImplementedError

    def stored_attributes(
        self, destination: Destination, audience: AudienceRef
    ) -> dict[str, dict[str, Any]] | None:
        """Record string -> attributes held, or None when the destination keeps none."""
        return None

    def make_member(self, i: int, **attributes: Any) -> Member:
        """The i-th test member, with every identifier type the suite knows."""
        return Member(
            key=f"p{i}",
            identifiers={"email": f"User{i}@Example.com ", "phone": f"+61 412 345 {i:03d}"},
            attributes=attributes or {"tier": "gold"},
        )

    # -- helpers -----------------------------------------------------------------------------

    def create(self, destination: Destination, name: str = "Conformance") -> AudienceRef:
        return destination.create_audience(name, idempotency_key=f"create-{name}")

    def add(
        self, destination: Destination, audience: AudienceRef, members: list[Member]
    ) -> BatchResult:
        result = destination.add_members(audience, members, idempotency_key=f"add-{len(members)}")
        assert isinstance(result, BatchResult)
        return result

    # -- the contract ------------------------------------------------------------------------

    def test_implements_the_protocol(self, destination: Destination) -> None:
        assert isinstance(destination, Destination)
        assert isinstance(destination.type_name, str) and destination.type_name
        assert destination.accepted_identifiers
        assert isinstance(destination.accepted_identifiers, tuple)
        assert destination.batch_size >= 1

    def test_create_find_and_list(self, destination: Destination) -> None:
        audience = self.create(destination, "Spring VIPs")
        assert audience.name == "Spring VIPs" and audience.id
        assert destination.find_audience(audience.id) == audience
        assert destination.find_audience("Spring VIPs").id == audience.id
        assert destination.find_audience("spring vips") is None
        assert destination.find_audience("no such audience") is None
        listed = {a.id: a.name for a in destination.list_audiences()}
        assert listed[audience.id] == "Spring VIPs"

    def test_create_is_idempotent_per_key(self, destination: Destination) -> None:
        first = destination.create_audience("Once", idempotency_key="k-1")
        again = destination.create_audience("Once", idempotency_key="k-1")
        other = destination.create_audience("Once", idempotency_key="k-2")
        assert again.id == first.id
        assert other.id != first.id
        assert [a.id for a in destination.list_audiences()].count(first.id) == 1

    def test_rename(self, destination: Destination) -> None:
        audience = self.create(destination, "Old name")
        renamed = destination.rename_audience(audience, "New name")
        assert (renamed.id, renamed.name) == (audience.id, "New name")
        assert destination.find_audience("New name").id == audience.id
        assert destination.find_audience("Old name") is None

    def test_add_records_what_was_stored(self, destination: Destination) -> None:
        audience = self.create(destination)
        members = [self.make_member(i) for i in range(5)]
        result = self.add(destination, audience, members)
        assert set(result.records) == {m.key for m in members}
        assert not result.failed
        assert all(result.records[m.key] for m in members)
        sent = {s for record in result.records.values() for s in record}
        assert len(sent) == sum(len(r) for r in result.records.values())  # no sharing here
        assert self.stored_records(destination, audience) == sent

    def test_add_is_idempotent(self, destination: Destination) -> None:
        audience = self.create(destination)
        members = [self.make_member(i) for i in range(3)]
        first = self.add(destination, audience, members)
        second = self.add(destination, audience, members)
        assert first.records == second.records
        stored = self.stored_records(destination, audience)
        assert stored == {s for record in first.records.values() for s in record}

    def test_member_without_usable_identifier_is_unmatched(self, destination: Destination) -> None:
        audience = self.create(destination)
        good = self.make_member(1)
        bad = Member(key="nobody", identifiers={"email": "not an address", "phone": None})
        result = self.add(destination, audience, [good, bad])
        assert set(result.records) == {"p1"} and not result.failed
        assert result.unmatched == ["nobody"]
        assert self.stored_records(destination, audience) == set(result.records["p1"])

    def test_records_for_is_what_add_sends(self, destination: Destination) -> None:
        audience = self.create(destination)
        members = [self.make_member(i) for i in range(3)]
        nobody = Member(key="nobody", identifiers={"email": None})
        predicted = destination.records_for([*members, nobody])
        assert predicted["nobody"] == ()
        assert self.stored_records(destination, audience) == set()  # nothing was sent
        sent = self.add(destination, audience, members).records
        assert sent == {m.key: predicted[m.key] for m in members}

    def test_removal_sends_what_was_recorded(self, destination: Destination) -> None:
        audience = self.create(destination)
        members = [self.make_member(i) for i in range(4)]
        sent = self.add(destination, audience, members).records
        # a removal carries only what was recorded, never today's identifiers
        removals = [RemovalRecord(key=k, record=sent[k]) for k in ("p0", "p1")]
        result = destination.remove_members(audience, removals, idempotency_key="rm-1")
        assert set(result.records) == {"p0", "p1"} and not result.failed
        left = {s for k in ("p2", "p3") for s in sent[k]}
        assert self.stored_records(destination, audience) == left
        again = destination.remove_members(audience, removals, idempotency_key="rm-2")
        assert set(again.records) == {"p0", "p1"} and not again.failed
        assert self.stored_records(destination, audience) == left

    def test_update_round_trip(self, destination: Destination) -> None:
        if not destination.supports_update:
            pytest.skip("the engine sends remove-old + add-new to this destination")
        audience = self.create(destination)
        member = self.make_member(7, tier="gold")
        sent = self.add(destination, audience, [member]).records[member.key]
        changed = self.make_member(7, tier="platinum")
        result = destination.update_members(audience, [changed], idempotency_key="up-1")
        assert result.records == {member.key: sent} and not result.failed
        assert self.stored_records(destination, audience) == set(sent)
        stored = self.stored_attributes(destination, audience)
        if stored is not None:
            assert {stored[s]["tier"] for s in sent} == {"platinum"}

    def test_unknown_audience_is_terminal(self, destination: Destination) -> None:
        ghost = AudienceRef(id="does-not-exist-0", name="ghost")
        with pytest.raises(TerminalError):
            destination.add_members(ghost, [self.make_member(1)], idempotency_key="ghost")
