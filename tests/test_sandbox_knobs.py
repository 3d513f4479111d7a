"""The ``sandbox`` destination's failure knobs (``destinations.sandbox.config``): each one
through the adapter, and what it leaves in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from destinations.base import AudienceRef
from destinations.sandbox import open_store
from reconciler.errors import CredentialsRefused, ThrottledError, TransientError
from tests.destination_conformance import call, members_of, removal
from tests.test_sandbox import SANDBOX_FILE, batch, make


@pytest.fixture
def audience(tmp_path: Path) -> AudienceRef:
    """An empty audience created by a destination without knobs (then closed)."""
    plain = make(tmp_path)
    created = plain.create_audience("Knobs", idempotency_key="setup")
    plain.close()
    return created


# -- failure knobs ---------------------------------------------------------------------------
def test_refuse_credentials_refuses_every_call(tmp_path: Path) -> None:
    destination = make(tmp_path, refuse_credentials=True)
    aud = AudienceRef("sbx_1", "x")
    members = batch(destination, 1)  # encoding needs no call
    calls = [
        destination.list_audiences,
        lambda: destination.find_audience("x"),
        lambda: destination.read_audience(aud),
        lambda: destination.find_created_audience("x", idempotency_key="k"),
        lambda: destination.create_audience("x", idempotency_key="k"),
        lambda: destination.rename_audience(aud, "y"),
        lambda: destination.add(aud, members, call()),
        lambda: destination.update(aud, members, call()),
        lambda: destination.remove(aud, removal(members, ["p0"]), call()),
    ]
    for attempt in calls:
        with pytest.raises(CredentialsRefused, match="refuse_credentials"):
            attempt()
    assert not destination.path.exists()


@pytest.mark.parametrize(
    ("knob", "error"),
    [("transient_error_rate", TransientError), ("throttle_rate", ThrottledError)],
)
def test_failure_knobs_raise_before_writing(
    tmp_path: Path, audience: AudienceRef, knob: str, error: type[Exception]
) -> None:
    destination = make(tmp_path, **{knob: 1.0})
    with pytest.raises(error) as raised:
        destination.add(audience, batch(destination, 1), call())
    if error is ThrottledError:
        assert raised.value.retry_after == 0.01
    with pytest.raises(error):
        destination.create_audience("Never", idempotency_key="c")
    sandbox = open_store(destination.path)
    assert sandbox.match_keys(audience.id) == set()
    assert [a.name for a in sandbox.audiences()] == ["Knobs"]


def test_lost_ack_applies_then_raises(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, lost_ack_rate=1.0)
    with pytest.raises(TransientError, match="applied"):
        destination.add(audience, batch(destination, 1), call())
    assert len(open_store(destination.path).match_keys(audience.id)) == 2
    for _ in range(2):  # the retry with the same key finds the audience made the first time
        with pytest.raises(TransientError):
            destination.create_audience("Lost", idempotency_key="c")
    assert [a.name for a in destination.list_audiences()] == ["Knobs", "Lost"]


def test_reject_rate_refuses_members_with_a_reason(tmp_path: Path, audience: AudienceRef) -> None:
    everyone = make(tmp_path, reject_rate=1.0)
    outcome = everyone.add(audience, batch(everyone, 2), call())
    assert set(outcome.rejected) == {"p0", "p1"} and "reject_rate" in outcome.rejected["p0"]
    everyone.close()
    assert open_store(tmp_path / SANDBOX_FILE).match_keys(audience.id) == set()

    refused = []
    for key in ("b1", "b2"):  # the same seed refuses the same members
        some = make(tmp_path, reject_rate=0.5, seed=7)
        members = batch(some, 40)
        outcome = some.add(audience, members, call(key))
        some.close()
        refused.append(set(outcome.rejected))
        assert not outcome.retry
    assert refused[0] == refused[1] and 0 < len(refused[0]) < 40
    taken = [k for k in members.keys if k not in refused[0]]
    assert open_store(tmp_path / SANDBOX_FILE).match_keys(audience.id) == members_of(members, taken)


def test_reject_keys_refuse_listed_members_only(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, reject_add_keys=["p1"], reject_remove_keys=["p2"])
    members = batch(destination, 3)
    added = destination.add(audience, members, call())
    assert set(added.rejected) == {"p1"} and "listed" in added.rejected["p1"]
    updated = destination.update(audience, batch(destination, 2), call())
    assert set(updated.rejected) == {"p1"}
    removed = destination.remove(audience, removal(members, ["p0", "p2"]), call())
    assert set(removed.rejected) == {"p2"}
    # p2 is refused only by removals, p1 only by additions
    assert open_store(destination.path).match_keys(audience.id) == members_of(members, ["p2"])


def test_rejected_removals_stay(tmp_path: Path, audience: AudienceRef) -> None:
    plain = make(tmp_path)
    members = batch(plain, 1)
    plain.add(audience, members, call())
    plain.close()
    refusing = make(tmp_path, reject_rate=1.0)
    outcome = refusing.remove(audience, removal(members, ["p0"]), call())
    assert set(outcome.rejected) == {"p0"}
    assert open_store(refusing.path).match_keys(audience.id) == members_of(members)


def test_retry_keys_are_answered_retry_later(tmp_path: Path, audience: AudienceRef) -> None:
    destination = make(tmp_path, retry_keys=["p0"], reject_add_keys=["p1"])
    members = batch(destination, 3)
    outcome = destination.add(audience, members, call())
    assert set(outcome.retry) == {"p0"} and "retry" in outcome.retry["p0"]
    assert set(outcome.rejected) == {"p1"}  # a rejection wins over a retry
    assert open_store(destination.path).match_keys(audience.id) == members_of(members, ["p2"])
    outcome = destination.remove(audience, removal(members, ["p0", "p2"]), call())
    assert set(outcome.retry) == {"p0"} and not outcome.rejected
    assert open_store(destination.path).match_keys(audience.id) == set()


def test_delay_per_batch_waits_before_creates_and_member_calls(
    tmp_path: Path, audience: AudienceRef
) -> None:
    destination = make(tmp_path, delay_per_batch=0.25)
    waits: list[float] = []
    destination.sleep = waits.append
    members = batch(destination, 1)
    destination.add(audience, members, call())
    destination.remove(audience, removal(members, ["p0"]), call())
    destination.rename_audience(audience, "Renamed")  # not delayed
    destination.create_audience("New", idempotency_key="c")
    assert waits == [0.25, 0.25, 0.25]
    assert make(tmp_path).config.delay_per_batch == 0  # off by default


# A child process that makes three write calls (create, add, add) with the exit knob set.
EXIT_SCRIPT = """\
import sys
from pathlib import Path
from destinations.base import CallContext, DestinationContext, MemberBatch
from destinations.sandbox import SandboxConfig, SandboxDestination
from destinations.sandbox.config import SandboxCredentials
config = SandboxConfig(exit_after_calls=int(sys.argv[2]), exit_when=sys.argv[3])
context = DestinationContext(Path(sys.argv[1]), "AU")
dest = SandboxDestination(config, SandboxCredentials(), context, None)
aud = dest.create_audience("Exit", idempotency_key="c")
for i in (1, 2):
    dest.add(aud, MemberBatch([f"p{i}"], {}, [(f"email_sha256:{i}",)]), CallContext(str(i)))
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
    sandbox = open_store(tmp_path / SANDBOX_FILE)
    (aud,) = sandbox.audiences()
    assert len(sandbox.match_keys(aud.id)) == rows
    assert make(tmp_path).config.exit_after_calls is None  # off by default
