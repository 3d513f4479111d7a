"""Meta holds people, not hashes: what the adapter's calls do to a Custom Audience.

The fake (tests/fakes/meta.py) keeps (field, value) pairs, which cannot tell a removal that
takes out a person from one that takes out a stale string. Here the fake's request log is
replayed against a *person model*: each profile is one person matched by every anchor
identifier (e-mail, phone) it has ever had; a POST row adds every person it matches, a
DELETE row removes every person it matches. An identifier change must leave the person in;
a removal row must carry an identifier that matches by itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import WS, cli
from tests.fakes.meta import FakeMeta

TOKEN = "meta-people-token-0123456789"
ACCOUNT = "1234567890"
ANCHORS = {"EMAIL", "PHONE", "MADID", "EXTERN_ID"}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def fake() -> Iterator[FakeMeta]:
    with FakeMeta(token=TOKEN, account=ACCOUNT) as server:
        yield server


def _workspace(root: Path, fake: FakeMeta, monkeypatch) -> WS:
    (root / "segments").mkdir(parents=True)
    (root / "activations").mkdir()
    (root / "integrations").mkdir()
    (root / "reconcile.yaml").write_text(
        "version: 1\ntimezone: UTC\nsource:\n  type: duckdb\n  path: profiles.duckdb\n"
        "  profiles:\n    table: profiles\n    key: customer_id\n"
        "    identifiers: {email: email, phone: phone, last_name: last_name}\n"
        "    default_phone_country: AU\n"
        "state:\n  path: .reconcile/state.duckdb\n  allow_ephemeral: true\n"
    )
    (root / "segments" / "all.yaml").write_text("sql: SELECT customer_id FROM profiles\n")
    (root / "activations" / "people.yaml").write_text(
        "segments: [all]\ndestination: meta\nname: People\nmax_removal_share: 1\n"
    )
    (root / "integrations" / "meta.yaml").write_text(
        "type: meta_custom_audiences\ncredentials: {access_token: '${env:META_TOKEN}'}\n"
        f"endpoint: {fake.url}\nconfig:\n  ad_account_id: act_{ACCOUNT}\n"
        "  identifiers: [email, phone, last_name]\n"
    )
    monkeypatch.setenv("META_TOKEN", TOKEN)
    con = duckdb.connect(str(root / "profiles.duckdb"))
    con.execute(
        "CREATE TABLE profiles (customer_id VARCHAR, email VARCHAR, phone VARCHAR, "
        "last_name VARCHAR)"
    )
    con.execute(
        "INSERT INTO profiles VALUES ('ann', 'ann@example.com', '0412 000 001', 'Smith'), "
        "('bob', 'bob@example.com', '0412 000 002', 'Jones'), "
        "('cat', 'family@example.com', NULL, 'Lee'), "
        "('dan', 'family@example.com', NULL, 'Park')"
    )
    con.close()
    return WS(root)


def _sql(ws: WS, statement: str) -> None:
    con = duckdb.connect(str(ws.root / "profiles.duckdb"))
    con.execute(statement)
    con.close()


def _apply(ws: WS) -> None:
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr


def _rows(fake: FakeMeta) -> Iterator[tuple[str, dict[str, str]]]:
    """(method, {field: value}) of every row the adapter sent, in order."""
    for method, path, body in fake.requests:
        if not (body and path.endswith("/users") and "payload" in body):
            continue
        schema, data = body["payload"]["schema"], body["payload"]["data"]
        for row in data:
            if isinstance(schema, str):
                yield method, {schema.removesuffix("_SHA256"): row}
            else:
                yield method, {k: v for k, v in zip(schema, row, strict=True) if v}


def _audience(fake: FakeMeta, people: dict[str, set[str]]) -> set[str]:
    """The people in the audience after the replay; ``people``: name -> anchor hashes."""
    held: set[str] = set()
    for method, row in _rows(fake):
        anchors = {v for k, v in row.items() if k in ANCHORS}
        matched = {p for p, ids in people.items() if ids & anchors}
        held = held | matched if method == "POST" else held - matched
    return held


def test_a_changed_email_leaves_the_person_in_the_audience(tmp_path, fake, monkeypatch):
    ws = _workspace(tmp_path / "ws", fake, monkeypatch)
    people = {
        "ann": {sha("ann@example.com"), sha("ann.new@example.com"), sha("61412000001")},
        "bob": {sha("bob@example.com"), sha("61412000002")},
    }
    _apply(ws)
    assert _audience(fake, people) == {"ann", "bob"}
    _sql(ws, "UPDATE profiles SET email = 'ann.new@example.com' WHERE customer_id = 'ann'")
    _apply(ws)
    # removing the old e-mail after the new row was added took Ann out (and the state said
    # she was in: the next plan had no changes)
    assert _audience(fake, people) == {"ann", "bob"}
    assert "No changes" in cli(ws, "plan").output


def test_no_removal_row_goes_without_an_identifier_that_matches_alone(tmp_path, fake, monkeypatch):
    ws = _workspace(tmp_path / "ws", fake, monkeypatch)
    _apply(ws)
    sent = len(fake.requests)
    # a new last name: its old hash alone would match nobody (or a stranger)
    _sql(ws, "UPDATE profiles SET last_name = 'Brown' WHERE customer_id = 'ann'")
    # cat leaves; the inbox she shares with dan stays, so only her name would be left to send
    _sql(ws, "DELETE FROM profiles WHERE customer_id = 'cat'")
    _apply(ws)
    deletes = [row for method, row in list(_rows(fake))[sent:] if method == "DELETE"]
    assert all(set(row) & ANCHORS for row in deletes), deletes
    assert sha("smith") not in {v for row in deletes for v in row.values()}
    assert sha("lee") not in {v for row in deletes for v in row.values()}
    assert "No changes" in cli(ws, "plan").output
    people = {
        "ann": {sha("ann@example.com"), sha("61412000001")},
        "bob": {sha("bob@example.com"), sha("61412000002")},
        "dan": {sha("family@example.com")},
    }
    assert _audience(fake, people) == {"ann", "bob", "dan"}
