"""The ``sandbox`` destination: both layers of the conformance suite, then its own storage
(the DuckDB file a remote service would keep). Its failure knobs: ``test_sandbox_knobs.py``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

from destinations.base import AudienceRef, DestinationContext, MemberBatch, RemovalBatch
from destinations.sandbox import SandboxConfig, SandboxDestination, open_store, store
from destinations.sandbox.config import SandboxCredentials
from reconciler.errors import (
    AudienceGone,
    ConfigError,
    TerminalError,
)
from tests.destination_conformance import (
    AdapterConformance,
    EngineConformance,
    call,
    members_of,
    removal,
)

SANDBOX_FILE = ".reconcile/sandbox.duckdb"


def make(root: Path, **config: Any) -> SandboxDestination:
    context = DestinationContext(root=root, default_phone_country="AU")
    return SandboxDestination(SandboxConfig(**config), SandboxCredentials(), context, None)


def batch(dest: SandboxDestination, n: int, start: int = 0, **attributes: Any) -> MemberBatch:
    """Members p<start>.. as the engine sends them (e-mail and phone of each)."""
    return AdapterConformance().make_batch(n, dest, start=start, attributes=attributes or None)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def log_rows(path: Path) -> list[tuple]:
    """Every row of the append-only member log, in order."""
    return open_store(path)._query(
        lambda con: con.execute("SELECT * FROM member_log ORDER BY seq").fetchall()
    )


def delete_audiences(path: Path, where: str, value: str) -> None:
    """Delete audiences (and their members) in the file, behind the adapter's back."""

    def delete(con: duckdb.DuckDBPyConnection) -> None:
        ids = [
            r[0] for r in con.execute(f"SELECT id FROM audiences WHERE {where}", [value]).fetchall()
        ]
        for table, column in (("member_log", "audience_id"), ("audiences", "id")):
            con.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?))", [ids])

    con = store.connect(path)
    try:
        store.transaction(con, delete)
    finally:
        con.close()


# -- the conformance suite -------------------------------------------------------------------
class TestSandboxAdapter(AdapterConformance):
    @pytest.fixture
    def destination(self, tmp_path: Path) -> Iterator[SandboxDestination]:
        destination = make(tmp_path, batch_size=500)
        yield destination
        destination.close()

    def stored_records(self, destination: Any, audience: AudienceRef) -> set[str]:
        return open_store(destination.path).match_keys(audience.id)

    def stored_attributes(self, destination: Any, audience: AudienceRef) -> dict[str, Any]:
        return open_store(destination.path).attributes(audience.id)

    def stored_rows(self, destination: Any, audience: AudienceRef) -> int:
        sql = "SELECT count(*) FROM member_log WHERE audience_id = ?"
        return open_store(destination.path)._query(
            lambda con: con.execute(sql, [audience.id]).fetchone()[0]
        )

    def calls_received(self, destination: Any) -> int:
        if not destination.path.exists():
            return 0
        sql = "SELECT count(*) FROM requests"
        return open_store(destination.path)._query(lambda con: con.execute(sql).fetchone()[0])

    def delete_outside(self, destination: Any, audience: AudienceRef) -> None:
        delete_audiences(destination.path, "id = ?", audience.id)


class SandboxFake:
    """The sandbox as the engine suite's fake: faults are knobs of the integration file."""

    def __init__(self, root: Path, render) -> None:
        self.root, self.render, self.knobs = root, render, {}

    def _set(self, **knobs: Any) -> None:
        self.knobs |= knobs
        (self.root / "integrations/target.yaml").write_text(self.render(self.root, **self.knobs))

    def throttle_storm(self) -> None:
        self._set(throttle_rate=0.6, seed=3)

    def throttled(self) -> None:
        return None  # the sandbox keeps no count of its simulated throttles

    def expire_token(self) -> None:
        self._set(refuse_credentials=True)

    def reject(self, members) -> None:
        self._set(reject_add_keys=sorted(members))

    def delete_audience(self, name: str) -> None:
        delete_audiences(self.root / SANDBOX_FILE, "name = ?", name)

    def heal(self) -> None:
        self.knobs = {}
        self._set()


class TestSandboxEngine(EngineConformance):
    @pytest.fixture
    def fake(self, tmp_path: Path) -> SandboxFake:
        return SandboxFake(tmp_path / "ws", self.integration_yaml)

    def integration_yaml(self, tmp: Path, **knobs: object) -> str:
        config = {"path": SANDBOX_FILE, "identifiers": ["email", "phone"], "batch_size": 7}
        lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in (config | knobs).items())
        return f"type: sandbox\nconsent: email_consent\nconfig:\n{lines}"

    def held(self, fake: SandboxFake) -> dict[str, set[str]]:
        path = fake.root / SANDBOX_FILE
        if not path.exists():
            return {}
        store_ = open_store(path)
        return {a.name: store_.match_keys(a.id) for a in store_.audiences()}


# -- configuration and storage ---------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": 100_001},
        {"reject_rate": 1.5},
        {"throttle_rate": -0.1},
        {"identifiers": ["madid"]},
        {"identifiers": []},
        {"exit_after_calls": 0},
        {"exit_when": "during"},
        {"unknown": 1},
    ],
)
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SandboxConfig(**bad)


def test_construction_and_reads_create_no_file_and_the_first_write_does(tmp_path: Path) -> None:
    destination = make(tmp_path, path="nested/dir/audiences.duckdb", batch_size=10)
    assert destination.path == tmp_path / "nested/dir/audiences.duckdb"
    assert destination.limits.members_per_call == 10
    # reads (what `plan` does) find nothing and create nothing
    assert destination.list_audiences() == []
    assert destination.find_audience("x") is None
    assert destination.read_audience(AudienceRef("sbx_1", "x")) is None
    assert destination.find_created_audience("x", idempotency_key="k") is None
    assert not (tmp_path / "nested").exists()
    destination.create_audience("x", idempotency_key="k")
    assert destination.path.exists()
    destination.close()


def test_records_are_stored_as_sent_and_size_counts_rows(tmp_path: Path) -> None:
    destination = make(tmp_path)
    assert destination.identity.accepted == ("email", "phone")
    assert [e.field for e in destination.identity.encodings] == ["email", "phone"]
    aud = destination.create_audience("Records", idempotency_key="c")
    sent = batch(destination, 1, start=1, tier="gold")
    expected = (f"email_sha256:{sha('user1@example.com')}", f"phone_sha256:{sha('+61400000001')}")
    assert tuple(sent.records[0]) == expected
    destination.add(aud, sent, call())
    assert open_store(destination.path).match_keys(aud.id) == set(expected)
    assert open_store(destination.path).attributes(aud.id)[expected[0]] == {"tier": "gold"}
    # size counts rows (record strings), not people
    assert destination.find_audience(aud.id).size == 2
    assert open_store(destination.path).audiences() == [AudienceRef(aud.id, "Records", 2)]


def test_identifiers_config_limits_the_identity(tmp_path: Path) -> None:
    destination = make(tmp_path, identifiers=["phone"])
    assert destination.identity.accepted == ("phone",)
    assert batch(destination, 1, start=2).records == [(f"phone_sha256:{sha('+61400000002')}",)]


def test_shared_record_in_one_batch_is_one_row(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Shared", idempotency_key="c")
    shared = f"email_sha256:{sha('family@example.com')}"
    both = MemberBatch(["a", "b"], {}, [(shared,), (shared,)], {"n": [1, 2]})
    destination.add(aud, both, call())
    assert open_store(destination.path).attributes(aud.id) == {shared: {"n": 2}}


def test_find_by_name_prefers_the_newest(tmp_path: Path) -> None:
    destination = make(tmp_path)
    destination.create_audience("Twin", idempotency_key="1")
    newer = destination.create_audience("Twin", idempotency_key="2")
    assert destination.find_audience("Twin") == newer
    assert destination.find_audience(newer.id) == newer


def test_data_survives_reopening(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Durable", idempotency_key="c")
    sent = batch(destination, 2)
    destination.add(aud, sent, call())
    destination.close()
    reopened = make(tmp_path)
    assert reopened.find_audience("Durable") == AudienceRef(aud.id, "Durable", 4)
    assert reopened.create_audience("Durable", idempotency_key="c").id == aud.id
    assert open_store(reopened.path).match_keys(aud.id) == members_of(sent)
    reopened.close()
    reopened.close()  # closing twice is harmless
    assert reopened.list_audiences()[0].id == aud.id  # and a later call reopens


def test_a_failing_call_writes_nothing(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Atomic", idempotency_key="c")
    destination.close()
    con = store.connect(destination.path)

    def half_done(c: duckdb.DuckDBPyConnection) -> None:
        batch = MemberBatch(["k"], {}, [("email_sha256:x",)])
        store.upsert(c, aud.id, store.as_table(batch), [])
        raise RuntimeError("the process failed mid-call")

    with pytest.raises(RuntimeError):
        store.transaction(con, half_done)
    con.close()
    assert open_store(destination.path).match_keys(aud.id) == set()


def test_unknown_audience_and_reused_key_are_terminal(tmp_path: Path) -> None:
    destination = make(tmp_path)
    ghost = AudienceRef("sbx_0000000000", "ghost")
    destination.create_audience("Keys", idempotency_key="c")
    with pytest.raises(AudienceGone, match="sbx_0000000000"):
        destination.rename_audience(ghost, "boo")
    with pytest.raises(AudienceGone, match="sbx_0000000000"):
        destination.remove(ghost, RemovalBatch(["p"], [("x",)]), call())
    aud = destination.find_audience("Keys")
    destination.add(aud, batch(destination, 1), call("used"))
    with pytest.raises(TerminalError, match="was used for add"):
        destination.create_audience("Keys 2", idempotency_key="used")


def test_replays_are_detected_by_idempotency_key(tmp_path: Path) -> None:
    destination = make(tmp_path)
    aud = destination.create_audience("Replays", idempotency_key="c")
    first = batch(destination, 2)
    destination.add(aud, first, call("add-1"))
    # a replay is answered, not applied again: even with other members in it
    other = batch(destination, 2, start=5)
    replayed = destination.add(aud, other, call("add-1"))
    assert "replayed" in replayed.detail
    assert open_store(destination.path).match_keys(aud.id) == members_of(first)
    gone = removal(first, ["p0"])
    destination.remove(aud, gone, call("rm-1"))
    destination.add(aud, first, call("add-2"))  # p0 back
    assert "replayed" in destination.remove(aud, gone, call("rm-1")).detail
    assert open_store(destination.path).match_keys(aud.id) == members_of(first)


def test_unknown_default_phone_country_is_a_config_error(tmp_path: Path) -> None:
    context = DestinationContext(root=tmp_path, default_phone_country="XX")
    with pytest.raises(ConfigError, match="'XX'"):
        SandboxDestination(SandboxConfig(), SandboxCredentials(), context, None)
    email_only = SandboxDestination(
        SandboxConfig(identifiers=["email"]), SandboxCredentials(), context, None
    )
    assert email_only.identity.accepted == ("email",)


def test_open_store_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "nope.duckdb").audiences()


def test_an_old_file_with_a_members_table_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / SANDBOX_FILE
    path.parent.mkdir(parents=True)
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE audiences (id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, "
        "created_at TIMESTAMP NOT NULL)"
    )
    con.execute(
        "CREATE TABLE members (audience_id VARCHAR NOT NULL, match_key VARCHAR NOT NULL, "
        "attributes JSON, updated_at TIMESTAMP NOT NULL)"
    )
    con.execute(
        "CREATE TABLE requests (idempotency_key VARCHAR PRIMARY KEY, op VARCHAR NOT NULL, "
        'audience_id VARCHAR, "at" TIMESTAMP NOT NULL)'
    )
    con.execute("INSERT INTO audiences VALUES ('sbx_old', 'Old', now())")
    con.execute(
        "INSERT INTO members VALUES ('sbx_old', 'email_sha256:a', '{\"n\": 1}', now()), "
        "('sbx_old', 'email_sha256:b', '{}', now())"
    )
    con.execute("INSERT INTO requests VALUES ('k-old', 'create', 'sbx_old', now())")
    con.close()
    destination = make(tmp_path)
    old = destination.find_audience("Old")
    assert old == AudienceRef("sbx_old", "Old", 2)
    assert open_store(path).attributes("sbx_old") == {
        "email_sha256:a": {"n": 1},
        "email_sha256:b": {},
    }
    # it keeps working: a removal is logged, an old request key is still a replay
    destination.remove(old, RemovalBatch(["p"], [("email_sha256:a",)]), call())
    assert open_store(path).match_keys("sbx_old") == {"email_sha256:b"}
    assert destination.create_audience("Old", idempotency_key="k-old").id == "sbx_old"
    destination.close()
    tables = open_store(path)._query(
        lambda c: {r[0] for r in c.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    )
    assert tables == {"audiences", "jobs", "member_log", "requests"}


def test_a_write_appends_only_its_own_rows_to_the_log(tmp_path: Path) -> None:
    """A call costs in proportion to its batch, never to the audience: every write appends
    exactly the batch's rows to member_log and leaves every earlier row as it was."""
    destination = make(tmp_path, batch_size=1000)
    aud = destination.create_audience("Big", idempotency_key="c")
    destination.add(aud, batch(destination, 300), call())
    before = log_rows(destination.path)
    assert len(before) == 600
    more = batch(destination, 5, start=1000)
    destination.add(aud, more, call())
    after = log_rows(destination.path)
    assert after[: len(before)] == before  # nothing rewritten
    assert len(after) - len(before) == len(members_of(more))
    # an update of members already held appends their rows too, nothing else
    destination.update(aud, batch(destination, 2, tier="new"), call())
    updated = log_rows(destination.path)
    assert updated[: len(after)] == after and len(updated) - len(after) == 4
    # a removal appends one row per record string removed, a replay appends nothing
    gone = removal(more, ["p1000", "p1001"])
    destination.remove(aud, gone, call("rm"))
    removed = log_rows(destination.path)
    assert removed[: len(updated)] == updated and len(removed) - len(updated) == 4
    assert all(row[4] for row in removed[len(updated) :])  # removal entries
    destination.remove(aud, gone, call("rm"))
    assert log_rows(destination.path) == removed
