"""The ``sandbox`` destination: the shared conformance suite plus its own knobs and storage."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

from destinations import registry, sandbox
from destinations.base import AudienceRef, DestinationContext, Member, RemovalRecord
from destinations.sandbox import SandboxConfig, SandboxDestination, open_store
from reconciler.errors import (
    ConfigError,
    CredentialsRefused,
    TerminalError,
    ThrottledError,
    TransientError,
)
from tests.destination_conformance import DestinationConformance


def make(root: Path, **config: Any) -> SandboxDestination:
    context = DestinationContext(root=root, default_phone_country="AU")
    return SandboxDestination(SandboxConfig(**config), {}, None, context)


def member(i: int, **attributes: Any) -> Member:
    return Member(
        key=f"p{i}",
        identifiers={"email": f"user{i}@example.com", "phone": f"0412 345 {i:03d}"},
        attributes=attributes,
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TestSandboxConformance(DestinationConformance):
    @pytest.fixture
    def destination(self, tmp_path: Path) -> Iterator[SandboxDestination]:
        destination = make(tmp_path)
        yield destination
        destination.close()

    def stored_records(self, destination: Any, audience: AudienceRef) -> set[str]:
        return open_store(destination.path).match_keys(audience.id)

    def stored_attributes(self, destination: Any, audience: AudienceRef) -> dict[str, Any]:
        return open_store(destination.path).attributes(audience.id)


@pytest.fixture
def audience(tmp_path: Path) -> AudienceRef:
    """An empty audience created by a destination without knobs (then closed)."""
    plain = make(tmp_path)
    created = plain.create_audience("Knobs", idempotency_key="setup")
    plain.close()
    return created


# -- configuration and storage ---------------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    assert registry.load("sandbox") is SandboxDestination


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": 100_001},
        {"reject_rate": 1.5},
        {"throttle_rate": -0.1},
        {"identifiers": ["madid"]},
        {"identifiers": []},
        {"unknown": 1},
    ],
)
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SandboxConfig(**bad)


def test_construction_and_reads_do_no_io_and_first_write_creates_the_file(tmp_path: Path) -> None:
    destination = make(tmp_path, path="nested/dir/audiences.duckdb", batch_size=10)
    assert destination.path == tmp_path / "nested/dir/audiences.duckdb"
    assert destination.batch_size == 10
    assert not (tmp_path / "nested").exists()
    # reads (what `plan` does) find nothing and create nothing
    assert destination.list_audiences() == []
    assert destination.find_audience("x") is None
    assert destination.find_created_audience("x", idempotency_key="k") is None
    assert not (tmp_path / "nested").exists()
    destination.create_audience("x", idempotency_key="k")
    assert destination.path.exists()
    destination.close()


def test_records_are_hashes_of_normalised_identifiers(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Records", idempotency_key="c")
    result = destination.add_members(aud, [member(1, tier="gold")], idempotency_key="a")
    expected = (f"email_sha256:{sha('user1@example.com')}", f"phone_sha256:{sha('+61412345001')}")
    assert result.records == {"p1": expected}
    assert open_store(destination.path).match_keys(aud.id) == set(expected)
    # size counts rows (match keys), not people
    assert destination.find_audience(aud.id).size == 2
    assert open_store(destination.path).audiences() == [AudienceRef(aud.id, "Records", 2)]


def test_identifiers_config_limits_what_is_sent(tmp_path: Path) -> None:
    destination = make(tmp_path, identifiers=["phone"])
    assert destination.accepted_identifiers == ("phone",)
    aud = destination.create_audience("Phones", idempotency_key="c")
    result = destination.add_members(aud, [member(2)], idempotency_key="a")
    assert result.records == {"p2": (f"phone_sha256:{sha('+61412345002')}",)}


def test_shared_identifier_in_one_batch_is_one_row(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Shared", idempotency_key="c")
    a = Member("a", {"email": "family@example.com"}, {"n": 1})
    b = Member("b", {"email": "Family@Example.com"}, {"n": 2})
    result = destination.add_members(aud, [a, b], idempotency_key="x")
    assert result.records["a"] == result.records["b"]
    assert open_store(destination.path).attributes(aud.id) == {result.records["b"][0]: {"n": 2}}


def test_find_by_name_prefers_the_newest(tmp_path: Path) -> None:
    destination = make(tmp_path)
    destination.create_audience("Twin", idempotency_key="1")
    newer = destination.create_audience("Twin", idempotency_key="2")
    assert destination.find_audience("Twin") == newer
    assert destination.find_audience(newer.id) == newer


def test_data_survives_reopening(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Durable", idempotency_key="c")
    sent = destination.add_members(aud, [member(1), member(2)], idempotency_key="a").records
    destination.close()
    reopened = make(tmp_path)
    assert reopened.find_audience("Durable") == AudienceRef(aud.id, "Durable", 4)
    assert reopened.create_audience("Durable", idempotency_key="c").id == aud.id
    assert open_store(reopened.path).match_keys(aud.id) == {*sent["p1"], *sent["p2"]}
    reopened.close()
    reopened.close()  # closing twice is harmless
    assert reopened.list_audiences()[0].id == aud.id  # and a later call reopens


def test_a_failing_call_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Atomic", idempotency_key="c")
    # the request log is written after the members: make that last statement fail
    monkeypatch.setattr(sandbox, "_LOG", "INSERT INTO no_such_table VALUES (?, ?, ?, ?)")
    with pytest.raises(duckdb.CatalogException):
        destination.add_members(aud, [member(1)], idempotency_key="a")
    assert open_store(destination.path).match_keys(aud.id) == set()
    monkeypatch.undo()
    assert destination.add_members(aud, [member(1)], idempotency_key="a").records


def test_unknown_audience_and_reused_key_are_terminal(tmp_path: Path) -> None:
    destination = make(tmp_path)
    ghost = AudienceRef("sbx_0000000000", "ghost")
    with pytest.raises(TerminalError, match="sbx_0000000000"):
        destination.rename_audience(ghost, "boo")
    with pytest.raises(TerminalError, match="sbx_0000000000"):
        destination.remove_members(ghost, [RemovalRecord("p", ("x",))], idempotency_key="r")
    aud = destination.create_audience("Keys", idempotency_key="c")
    destination.add_members(aud, [member(1)], idempotency_key="used")
    with pytest.raises(TerminalError, match="was used for add"):
        destination.create_audience("Keys 2", idempotency_key="used")


def test_unknown_default_phone_country_is_a_config_error(tmp_path: Path) -> None:
    context = DestinationContext(root=tmp_path, default_phone_country="XX")
    with pytest.raises(ConfigError, match="'XX'"):
        SandboxDestination(SandboxConfig(), {}, None, context)
    email_only = SandboxDestination(SandboxConfig(identifiers=["email"]), {}, None, context)
    assert email_only.accepted_identifiers == ("email",)


def test_open_store_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "nope.duckdb").audiences()


# -- failure knobs ---------------------------------------------------------------------------


def test_refuse_credentials_refuses_every_call(tmp_path: Path) -> None:
    destination = make(tmp_path, refuse_credentials=True)
    aud = AudienceRef("sbx_1", "x")
    calls = [
        destination.list_audiences,
        lambda: destination.find_audience("x"),
        lambda: destination.create_audience("x", idempotency_key="k"),
        lambda: destination.rename_audience(aud, "y"),
        lambda: destination.add_members(aud, [member(1)], idempotency_key="k"),
        lambda: destination.update_members(aud, [member(1)], idempotency_key="k"),
        lambda: destination.remove_members(aud, [], idempotency_key="k"),
    ]
    for call in calls:
        with pytest.raises(CredentialsRefused):
            call()
    assert not destination.path.exists()
    assert destination.records_for([member(1)])["p1"]  # computing records needs no call


@pytest.mark.parametrize(
    ("knob", "error"),
    [("transient_error_rate", TransientError), ("throttle_rate", ThrottledError)],
)
def test_failure_knobs_raise_before_writing(
    tmp_path: Path, audience: AudienceRef, knob: str, error: type[Exception]
) -> None:
    destination = make(tmp_path, **{knob: 1.0})
    with pytest.raises(error) as raised:
        destination.add_members(audience, [member(1)], idempotency_key="a")
    if error is ThrottledError:
        assert raised.value.retry_after == 0.01
    with pytest.raises(error):
        destination.create_audience("Never", idempotency_key="c")
    store = open_store(destination.path)
    assert store.match_keys(audience.id) == set()
    assert [a.name for a in store.audiences()] == ["Knobs"]


def test_lost_ack_applies_then_raises(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, lost_ack_rate=1.0)
    with pytest.raises(TransientError, match="applied"):
        destination.add_members(audience, [member(1)], idempotency_key="a")
    assert len(open_store(destination.path).match_keys(audience.id)) == 2
    for _ in range(2):  # the retry with the same key finds the audience made the first time
        with pytest.raises(TransientError):
            destination.create_audience("Lost", idempotency_key="c")
    assert [a.name for a in destination.list_audiences()] == ["Knobs", "Lost"]


def test_reject_rate_refuses_members_with_a_reason(tmp_path: Path, audience: AudienceRef) -> None:
    everyone = make(tmp_path, reject_rate=1.0)
    result = everyone.add_members(audience, [member(1), member(2)], idempotency_key="a")
    assert result.records == {} and set(result.failed) == {"p1", "p2"}
    assert "reject_rate" in result.failed["p1"]
    everyone.close()

    members = [member(i) for i in range(40)]
    outcomes = []
    for _ in range(2):  # the same seed refuses the same members
        some = make(tmp_path, reject_rate=0.5, seed=7)
        result = some.add_members(audience, members, idempotency_key="b")
        some.close()
        outcomes.append(set(result.failed))
        assert set(result.records) | set(result.failed) == {m.key for m in members}
        assert not set(result.records) & set(result.failed)
    assert outcomes[0] == outcomes[1] and 0 < len(outcomes[0]) < 40
    stored = open_store(tmp_path / ".reconcile/sandbox.duckdb").match_keys(audience.id)
    assert stored == {s for record in result.records.values() for s in record}


def test_rejected_removals_stay(tmp_path: Path, audience: AudienceRef) -> None:
    plain = make(tmp_path)
    sent = plain.add_members(audience, [member(1)], idempotency_key="a").records
    plain.close()
    refusing = make(tmp_path, reject_rate=1.0)
    removal = [RemovalRecord("p1", sent["p1"])]
    result = refusing.remove_members(audience, removal, idempotency_key="r")
    assert result.records == {} and set(result.failed) == {"p1"}
    assert open_store(refusing.path).match_keys(audience.id) == set(sent["p1"])


def test_delay_per_batch(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, delay_per_batch=0.05)
    started = time.perf_counter()
    destination.add_members(audience, [member(1)], idempotency_key="a")
    destination.remove_members(audience, [], idempotency_key="r")
    assert time.perf_counter() - started >= 0.1


def test_reject_keys_refuse_listed_members_only(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, reject_add_keys=["p1"], reject_remove_keys=["p2"])
    added = destination.add_members(audience, [member(1), member(2)], idempotency_key="a")
    assert set(added.failed) == {"p1"} and "reject_add_keys" in added.failed["p1"]
    assert set(added.records) == {"p2"}
    updated = destination.update_members(audience, [member(1)], idempotency_key="u")
    assert set(updated.failed) == {"p1"} and updated.records == {}
    removal = [RemovalRecord("p2", added.records["p2"])]
    removed = destination.remove_members(audience, removal, idempotency_key="r")
    assert set(removed.failed) == {"p2"} and "reject_remove_keys" in removed.failed["p2"]
    # p2 is refused only by removals, p1 only by additions
    assert open_store(destination.path).match_keys(audience.id) == set(added.records["p2"])
    sent_p1 = make(tmp_path).add_members(audience, [member(1)], idempotency_key="b").records
    gone = destination.remove_members(
        audience, [RemovalRecord("p1", sent_p1["p1"])], idempotency_key="r2"
    )
    assert set(gone.records) == {"p1"} and not gone.failed
    assert open_store(destination.path).match_keys(audience.id) == set(added.records["p2"])


# A child process that makes three write calls (create, add, add) with the exit knob set.
EXIT_SCRIPT = """\
import sys
from pathlib import Path
from destinations.base import DestinationContext, Member
from destinations.sandbox import SandboxConfig, SandboxDestination
config = SandboxConfig(exit_after_calls=int(sys.argv[2]), exit_when=sys.argv[3])
dest = SandboxDestination(config, {}, None, DestinationContext(Path(sys.argv[1]), "AU"))
aud = dest.create_audience("Exit", idempotency_key="c")
for i in (1, 2):
    dest.add_members(aud, [Member(f"p{i}", {"email": f"u{i}@example.com"})], idempotency_key=str(i))
print("finished")
"""


@pytest.mark.parametrize(("when", "rows"), [("before", 1), ("after", 2)])
def test_exit_after_calls_ends_the_process_at_the_nth_write(
    tmp_path: Path, when: str, rows: int
) -> None:
    # the third write call (the second add) ends the process, before or after applying it
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), "3", when],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 137, done.stderr
    assert "finished" not in done.stdout
    store = open_store(tmp_path / ".reconcile/sandbox.duckdb")
    (aud,) = store.audiences()
    assert len(store.match_keys(aud.id)) == rows
    assert make(tmp_path).config.exit_after_calls is None  # off by default
    with pytest.raises(ValidationError):
        SandboxConfig(exit_after_calls=0)
    with pytest.raises(ValidationError):
        SandboxConfig(exit_when="during")
