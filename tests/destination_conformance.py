"""The conformance suite every destination adapter passes, in two layers.

:class:`AdapterConformance` checks the protocol (``destinations.base``, v2) by calling the
adapter directly; :class:`EngineConformance` (defined in :mod:`tests.engine_conformance`,
importable from here) runs ``reconcile apply`` end to end against the adapter's fake. An
adapter's test module subclasses both (see ``docs/destinations.md``, "Writing an adapter: the conformance suite").

Hooks of :class:`AdapterConformance` a subclass provides:

- ``destination`` fixture: a fresh adapter with no fault enabled (an HTTP adapter built with
  an ``httpx.Client`` pointed at its local fake server);
- :meth:`~AdapterConformance.stored_records`: the record strings the destination (its fake)
  holds for an audience, read behind the adapter's back;

and may override: :meth:`~AdapterConformance.stored_attributes` (destinations that keep
attributes), :meth:`~AdapterConformance.stored_rows` (rows held, duplicates counted),
:meth:`~AdapterConformance.calls_received` (write requests the fake received),
:meth:`~AdapterConformance.delete_outside` (delete an audience at the fake),
:meth:`~AdapterConformance.identifiers` / :meth:`~AdapterConformance.make_batch` (members sent)
and :attr:`~AdapterConformance.unknown_audience_id` (an id of the vendor's shape that does
not exist).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from destinations import registry
from destinations.base import (
    AudienceRef,
    CallContext,
    Capabilities,
    Credentials,
    Destination,
    DestinationConfig,
    Identity,
    Limits,
    MemberBatch,
    Outcome,
    RemovalBatch,
)
from destinations.identity import NormaliseContext, encode
from destinations.retry import RetryPolicy
from reconciler.errors import CredentialsRefused, TerminalError
from tests.engine_conformance import EngineConformance, Faults

__all__ = ["AdapterConformance", "EngineConformance", "Faults", "call", "members_of", "removal"]

_ids = itertools.count(1)


def call(batch_id: str | None = None, *, seq: int = 1, last: bool = True) -> CallContext:
    """A call context; a fresh ``batch_id`` (idempotency key) unless one is given."""
    return CallContext(batch_id=batch_id or f"conf-{next(_ids):06d}", seq=seq, last=last)


def members_of(batch: MemberBatch, keys: Sequence[str] | None = None) -> set[str]:
    """The record strings of ``keys`` (default: every member) of a batch."""
    wanted = set(batch.keys if keys is None else keys)
    return {r for k, rec in zip(batch.keys, batch.records, strict=True) if k in wanted for r in rec}


def removal(batch: MemberBatch, keys: Sequence[str]) -> RemovalBatch:
    """A removal of ``keys`` carrying exactly the records they were sent with."""
    recorded = dict(zip(batch.keys, batch.records, strict=True))
    return RemovalBatch(list(keys), [tuple(recorded[k]) for k in keys])


class AdapterConformance:
    """Protocol behaviour shared by every adapter (see the module docstring)."""

    #: an audience id of the vendor's shape that does not exist at the fake
    unknown_audience_id: str = "does-not-exist-0"

    # -- hooks -------------------------------------------------------------------------------
    @pytest.fixture
    def destination(self) -> Iterator[Destination]:
        raise NotImplementedError("subclasses provide a `destination` fixture")

    def stored_records(self, destination: Destination, audience: AudienceRef) -> set[str]:
        """Record strings the destination holds for ``audience`` (read independently)."""
        raise NotImplementedError("subclasses read what their destination holds")

    def stored_attributes(
        self, destination: Destination, audience: AudienceRef
    ) -> dict[str, dict[str, Any]] | None:
        """Record string -> attributes held, or None when the destination keeps none."""
        return None

    def stored_rows(self, destination: Destination, audience: AudienceRef) -> int | None:
        """Rows (duplicates counted) the destination holds for ``audience``; None: unknown."""
        return None

    def calls_received(self, destination: Destination) -> int | None:
        """Write requests the destination (its fake) has received so far; None: unknown."""
        return None

    def delete_outside(self, destination: Destination, audience: AudienceRef) -> None:
        """Delete ``audience`` at the destination behind the adapter's back."""
        pytest.skip("this suite cannot delete an audience at the destination")

    def identifiers(self, i: int) -> dict[str, str | None]:
        """Raw identifiers of the i-th test member: every type unique to one member (types
        shared between people, such as names or a country, are left out so removing one
        member never removes another's strings)."""
        return {
            "email": f" User{i}@Example.com ",
            "phone": f"+61 4{i:08d}",
            "external_id": f"crm-{i}",
            "madid": f"6d92078a-8246-4ba4-ae5b-{i:012x}",
        }

    def make_batch(
        self,
        n: int,
        destination: Destination,
        *,
        start: int = 0,
        attributes: dict[str, Any] | None = None,
    ) -> MemberBatch:
        """Members ``p<start>``.. ``p<start+n-1>`` encoded by the adapter's declared identity,
        as the engine would send them (values per encoding field, records, attributes when
        the destination takes attributes)."""
        identity = destination.identity
        country = getattr(getattr(destination, "context", None), "default_phone_country", "US")
        context = NormaliseContext(country)
        fields = [e.field for e in identity.encodings]
        keys: list[str] = []
        records: list[tuple[str, ...]] = []
        values: dict[str, list[str | None]] = {f: [] for f in fields}
        for i in range(start, start + n):
            encoded = encode(self.identifiers(i), identity.accepted, identity.rules, context)
            assert encoded, f"test member {i} has no identifier of {identity.accepted}"
            by_field = {e.encoding.field: e.value for e in encoded}
            keys.append(f"p{i}")
            records.append(tuple(e.record for e in encoded))
            for f in fields:
                values[f].append(by_field.get(f))
        attrs: dict[str, list[Any]] = {}
        if destination.capabilities.attributes:
            chosen = {"tier": "gold"} if attributes is None else attributes
            attrs = {name: [value] * n for name, value in chosen.items()}
        return MemberBatch(keys=keys, values=values, records=records, attributes=attrs)

    # -- helpers -----------------------------------------------------------------------------
    def create(self, destination: Destination, name: str = "Conformance") -> AudienceRef:
        return destination.create_audience(name, idempotency_key=f"create-{next(_ids)}")

    def settle(self, destination: Destination, outcome: Outcome) -> Outcome:
        """The final outcome of a call (an asynchronous job is polled until it is done)."""
        assert isinstance(outcome, Outcome)
        for _ in range(1000):
            if outcome.job is None:
                return outcome
            status = destination.poll(outcome.job)
            if status.done:
                assert status.outcome is not None
                return status.outcome
        raise AssertionError(f"job {outcome.job} never finished")

    def accepted(
        self, destination: Destination, outcome: Outcome, batch: MemberBatch | RemovalBatch
    ) -> None:
        """Every member of ``batch`` was taken: nothing rejected, nothing to retry."""
        final = self.settle(destination, outcome)
        assert not final.rejected and not final.retry, (final.rejected, final.retry)
        assert set(final.ids) <= set(batch.keys)

    def add(
        self, destination: Destination, audience: AudienceRef, batch: MemberBatch
    ) -> MemberBatch:
        self.accepted(destination, destination.add(audience, batch, call()), batch)
        return batch

    # -- the protocol ------------------------------------------------------------------------
    def test_implements_the_protocol(self, destination: Destination) -> None:
        assert isinstance(destination, Destination)
        assert isinstance(destination.type_name, str) and destination.type_name
        assert isinstance(destination, registry.load(destination.type_name))
        assert issubclass(destination.config_model, DestinationConfig)
        assert issubclass(destination.credentials_model, Credentials)
        assert isinstance(destination.capabilities, Capabilities)
        assert isinstance(destination.limits, Limits)
        assert destination.limits.members_per_call >= 1
        assert destination.limits.concurrency >= 1
        assert isinstance(destination.retry_policy, RetryPolicy)
        identity = destination.identity
        assert isinstance(identity, Identity)
        assert isinstance(identity.accepted, tuple) and identity.accepted
        assert identity.encodings  # every accepted type can be encoded by its rules
        fields = [e.field for e in identity.encodings]
        assert len(fields) == len(set(fields)), "two encodings share a payload field"

    def test_create_find_list_and_read(self, destination: Destination) -> None:
        audience = self.create(destination, "Spring VIPs")
        assert audience.name == "Spring VIPs" and audience.id
        assert destination.find_audience(audience.id).id == audience.id
        assert destination.find_audience("Spring VIPs").id == audience.id
        assert destination.find_audience("No such audience") is None
        listed = {a.id: a.name for a in destination.list_audiences()}
        assert listed[audience.id] == "Spring VIPs"
        read = destination.read_audience(audience)
        assert read is not None and (read.id, read.name) == (audience.id, "Spring VIPs")

    def test_create_with_the_same_key_twice_gives_one_audience(
        self, destination: Destination
    ) -> None:
        first = destination.create_audience("Once", idempotency_key="conf-key-1")
        again = destination.create_audience("Once", idempotency_key="conf-key-1")
        assert again.id == first.id
        assert [a.id for a in destination.list_audiences() if a.name == "Once"] == [first.id]

    def test_find_created_audience_by_key_never_by_name_alone(
        self, destination: Destination
    ) -> None:
        assert destination.find_created_audience("Twin", idempotency_key="conf-a") is None
        mine = destination.create_audience("Twin", idempotency_key="conf-a")
        # an audience of the same name made by another creation (another key, or by hand)
        other = destination.create_audience("Twin", idempotency_key="conf-b")
        assert other.id != mine.id
        assert destination.find_created_audience("Twin", idempotency_key="conf-a").id == mine.id
        assert destination.find_created_audience("Twin", idempotency_key="conf-b").id == other.id
        assert destination.find_created_audience("Twin", idempotency_key="conf-c") is None

    def test_rename(self, destination: Destination) -> None:
        if not destination.capabilities.rename:
            pytest.skip("audiences cannot be renamed at this destination")
        audience = self.create(destination, "Old name")
        renamed = destination.rename_audience(audience, "New name")
        assert (renamed.id, renamed.name) == (audience.id, "New name")
        assert destination.find_audience("New name").id == audience.id
        assert destination.find_audience("Old name") is None
        assert destination.read_audience(audience).name == "New name"

    # -- members -----------------------------------------------------------------------------
    def test_add_stores_exactly_the_records(self, destination: Destination) -> None:
        audience = self.create(destination)
        batch = self.add(destination, audience, self.make_batch(5, destination))
        assert all(batch.records)
        assert self.stored_records(destination, audience) == members_of(batch)

    def test_a_replayed_batch_is_harmless(self, destination: Destination) -> None:
        audience = self.create(destination)
        batch = self.make_batch(4, destination)
        ctx = call()
        self.accepted(destination, destination.add(audience, batch, ctx), batch)
        rows = self.stored_rows(destination, audience)
        # the same call again (a retry after a lost answer): same idempotency key
        self.accepted(destination, destination.add(audience, batch, ctx), batch)
        assert self.stored_records(destination, audience) == members_of(batch)
        assert self.stored_rows(destination, audience) == rows  # no duplicate rows
        # the same members in a new call (sent again after a crash): still held once
        self.add(destination, audience, batch)
        assert self.stored_records(destination, audience) == members_of(batch)

    def test_removal_sends_what_was_recorded(self, destination: Destination) -> None:
        audience = self.create(destination)
        batch = self.add(destination, audience, self.make_batch(4, destination))
        gone = removal(batch, ["p0", "p1"])
        self.accepted(destination, destination.remove(audience, gone, call()), gone)
        assert self.stored_records(destination, audience) == members_of(batch, ["p2", "p3"])
        # removing what is no longer there (and was never there) is fine
        never = self.make_batch(1, destination, start=90)
        again = RemovalBatch([*gone.keys, "p90"], [*gone.records, never.records[0]])
        self.accepted(destination, destination.remove(audience, again, call()), again)
        assert self.stored_records(destination, audience) == members_of(batch, ["p2", "p3"])

    def test_update_round_trip(self, destination: Destination) -> None:
        if not destination.capabilities.update:
            pytest.skip("the engine sends remove-old + add-new to this destination")
        audience = self.create(destination)
        sent = self.add(destination, audience, self.make_batch(2, destination))
        changed = self.make_batch(2, destination, attributes={"tier": "platinum"})
        self.accepted(destination, destination.update(audience, changed, call()), changed)
        assert self.stored_records(destination, audience) == members_of(sent)
        stored = self.stored_attributes(destination, audience)
        if stored is not None and destination.capabilities.attributes:
            assert {stored[r]["tier"] for r in members_of(sent)} == {"platinum"}

    def test_unknown_audience_is_gone(self, destination: Destination) -> None:
        ghost = AudienceRef(id=self.unknown_audience_id, name="ghost")
        assert destination.read_audience(ghost) is None
        batch = self.make_batch(1, destination)
        for attempt in (
            lambda: destination.add(ghost, batch, call()),
            lambda: destination.remove(ghost, removal(batch, ["p0"]), call()),
        ):
            with pytest.raises(TerminalError) as raised:
                attempt()
            assert not isinstance(raised.value, CredentialsRefused)

    def test_deleted_audience_is_gone(self, destination: Destination) -> None:
        if not destination.capabilities.refresh:
            pytest.skip("this destination cannot read an audience back (no drift detection)")
        audience = self.create(destination, "Deleted outside")
        batch = self.add(destination, audience, self.make_batch(2, destination))
        self.delete_outside(destination, audience)
        assert destination.read_audience(audience) is None
        with pytest.raises(TerminalError) as raised:
            destination.add(audience, batch, call())
        assert not isinstance(raised.value, CredentialsRefused)

    def test_a_full_batch_is_accepted_in_one_call(self, destination: Destination) -> None:
        audience = self.create(destination)
        size = destination.limits.members_per_call
        batch = self.make_batch(size, destination)
        before = self.calls_received(destination)
        self.add(destination, audience, batch)
        after = self.calls_received(destination)
        if before is not None and after is not None:
            assert after - before == 1
        assert self.stored_records(destination, audience) == members_of(batch)
