"""The deterministic demo customer database (``reconciler.sources.demo``)."""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from reconciler.sources import demo

AS_OF = date(2025, 6, 1)
N = 2_000
SEGMENT = "SELECT customer_id FROM profiles WHERE country = 'AU' AND total_spend >= 100"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    demo.generate(path, N, as_of=AS_OF)
    return path


def _query(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _scalar(path: Path, sql: str):
    return _query(path, sql)[0][0]


def _rows(path: Path) -> list[tuple]:
    return _query(path, "SELECT * FROM profiles ORDER BY customer_id")


def _content_md5(path: Path) -> str:
    return _scalar(
        path,
        "SELECT md5(string_agg(CAST(p AS VARCHAR), chr(10) ORDER BY customer_id))"
        " FROM profiles AS p",
    )


def _segment(path: Path) -> set[str]:
    return {key for (key,) in _query(path, SEGMENT)}


def test_generation_is_deterministic(demo_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.duckdb"
    demo.generate(again, N, as_of=AS_OF, threads=1, memory_limit="256MB")
    assert _rows(again) == _rows(demo_db)
    assert _content_md5(again) == _content_md5(demo_db)
    digest = hashlib.md5(repr(_rows(again)).encode()).hexdigest()
    assert digest == hashlib.md5(repr(_rows(demo_db)).encode()).hexdigest()


def test_seed_changes_data_but_not_keys(demo_db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    demo.generate(other, N, as_of=AS_OF, seed=8)
    assert _content_md5(other) != _content_md5(demo_db)
    keys = "SELECT customer_id FROM profiles ORDER BY customer_id"
    assert _query(other, keys) == _query(demo_db, keys)


def test_columns_and_types(demo_db: Path) -> None:
    described = _query(demo_db, "SELECT column_name, column_type FROM (DESCRIBE profiles)")
    assert described == [
        ("customer_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("phone", "VARCHAR"),
        ("first_name", "VARCHAR"),
        ("last_name", "VARCHAR"),
        ("country", "VARCHAR"),
        ("first_order_date", "DATE"),
        ("last_order_date", "DATE"),
        ("order_count", "INTEGER"),
        ("total_spend", "DECIMAL(12,2)"),
        ("email_consent", "BOOLEAN"),
    ]
    assert [name for name, _ in described] == [name for name, _ in demo.COLUMNS]
    tables = _query(demo_db, "SELECT table_name, comment FROM duckdb_tables()")
    assert [t for t, _ in tables] == ["profiles"]
    assert f"profiles={N} seed=7 as_of={AS_OF.isoformat()}" in tables[0][1]


def test_keys_unique_and_uuid_shaped(demo_db: Path) -> None:
    keys = [k for (k,) in _query(demo_db, "SELECT customer_id FROM profiles")]
    assert len(keys) == N
    assert len(set(keys)) == N
    assert all(len(k) == 36 and UUID_RE.match(k) for k in keys)


def test_shares_roughly_as_specified(demo_db: Path) -> None:
    shares = _query(
        demo_db,
        """SELECT avg((email IS NULL)::INT), avg((phone IS NULL)::INT),
                  avg(email_consent::INT), avg((country = 'AU')::INT)
           FROM profiles""",
    )[0]
    email_null, phone_null, consent, au = shares
    assert 0.01 <= email_null <= 0.06
    assert 0.06 <= phone_null <= 0.14
    assert 0.80 <= consent <= 0.90
    assert 0.72 <= au <= 0.88
    countries = {c for (c,) in _query(demo_db, "SELECT DISTINCT country FROM profiles")}
    assert countries == {"AU", "NZ", "US", "GB"}


def test_identifiers_need_normalising(demo_db: Path) -> None:
    emails = [e for (e,) in _query(demo_db, "SELECT email FROM profiles WHERE email NOTNULL")]
    assert all("@" in e for e in emails)
    assert any(e != e.strip() for e in emails)  # padded
    assert any(e.strip() != e.strip().lower() for e in emails)  # upper / mixed case
    assert sum(e == e.strip().lower() for e in emails) > 0.8 * len(emails)
    domains = {e.strip().lower().rsplit("@", 1)[1] for e in emails}
    assert len(domains) >= 3
    assert all(re.fullmatch(r"([a-z]+\.)?example\.(com|net|org)", d) for d in domains)
    phones = [p for (p,) in _query(demo_db, "SELECT phone FROM profiles WHERE country = 'AU'")]
    phones = [p for p in phones if p is not None]
    assert any(re.fullmatch(r"04\d\d \d{3} \d{3}", p) for p in phones)  # national
    assert any(p.startswith("+61 4") for p in phones)  # international
    assert any(re.fullmatch(r"\+614\d{8}", p) for p in phones)
    assert all(re.sub(r"\D", "", p).startswith(("0", "61")) for p in phones)


def test_dates_counts_and_spend(demo_db: Path) -> None:
    row = _query(
        demo_db,
        """SELECT bool_and(last_order_date >= first_order_date),
                   max(last_order_date), min(first_order_date),
                   min(order_count), min(total_spend),
                   avg((order_count = 1)::INT),
                   count(*) FILTER (WHERE order_count = 1 AND last_order_date <> first_order_date)
            FROM profiles WHERE first_order_date IS NOT NULL""",
    )[0]
    ordered, last_max, first_min, count_min, spend_min, one_timers, bad_one_timers = row
    assert ordered
    assert last_max < AS_OF
    assert first_min >= AS_OF - timedelta(days=3 * 365)
    assert count_min >= 1
    assert spend_min > 0
    assert 0.3 <= one_timers <= 0.7
    assert bad_one_timers == 0


def test_first_order_in_last_seven_days_segment_is_not_empty(demo_db: Path) -> None:
    recent = _scalar(
        demo_db,
        f"SELECT count(*) FROM profiles WHERE first_order_date >= DATE '{AS_OF}' - 7",
    )
    assert 0.01 * N <= recent <= 0.10 * N
    strict = _scalar(
        demo_db,
        f"SELECT count(*) FROM profiles WHERE first_order_date > DATE '{AS_OF}' - 7",
    )
    assert strict > 0


def test_household_inboxes_are_shared(demo_db: Path) -> None:
    shared = _scalar(
        demo_db,
        """SELECT count(*) FROM (SELECT email FROM profiles WHERE email NOTNULL
           GROUP BY email HAVING count(*) > 1)""",
    )
    assert 1 <= shared <= 0.03 * N


@pytest.mark.parametrize("share", [0.01, 0.1])
def test_churn_moves_the_requested_share(demo_db: Path, tmp_path: Path, share: float) -> None:
    path = tmp_path / "churned.duckdb"
    shutil.copy(demo_db, path)
    before = _segment(path)
    rows_before = {r[0]: r for r in _rows(path)}
    demo.churn(path, share, seed=1)
    after = _segment(path)
    left, entered = before - after, after - before
    total = round(share * len(before))
    assert len(left) == total // 2
    assert len(entered) == total - len(left)
    assert (len(left) + len(entered)) / len(before) == pytest.approx(share, rel=0.1)
    # only total_spend (and country, for entering rows) change; nothing else moves
    rows_after = {r[0]: r for r in _rows(path)}
    assert rows_after.keys() == rows_before.keys()
    changed = {k for k in rows_after if rows_after[k] != rows_before[k]}
    assert changed == left | entered
    untouched = [i for i, (c, _) in enumerate(demo.COLUMNS) if c not in ("country", "total_spend")]
    for k in changed:
        assert [rows_after[k][i] for i in untouched] == [rows_before[k][i] for i in untouched]


def test_churn_is_deterministic(demo_db: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    for p in (a, b, c):
        shutil.copy(demo_db, p)
    demo.churn(a, 0.05, seed=3)
    demo.churn(b, 0.05, seed=3)
    demo.churn(c, 0.05, seed=4)
    assert _content_md5(a) == _content_md5(b)
    assert _content_md5(a) != _content_md5(c)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "demo.duckdb"
    tmp = path.with_suffix(".tmp")
    tmp.parent.mkdir()
    tmp.write_bytes(b"left over by a killed run")
    demo.generate(path, 100, as_of=AS_OF)
    assert not tmp.exists()
    assert not Path(f"{tmp}.wal").exists()
    assert _scalar(path, "SELECT count(*) FROM profiles") == 100

    # a failure mid-build leaves the previous database untouched and no temporary file
    def broken(*args, **kwargs):
        return "SELECT nonsense FROM __demo_ids"

    monkeypatch.setattr(demo, "_select_sql", broken)
    with pytest.raises(duckdb.Error):
        demo.generate(path, 200, as_of=AS_OF)
    assert not tmp.exists()
    assert _scalar(path, "SELECT count(*) FROM profiles") == 100

    fresh = tmp_path / "fresh.duckdb"
    with pytest.raises(duckdb.Error):
        demo.generate(fresh, 200, as_of=AS_OF)
    assert not fresh.exists()
    assert not fresh.with_suffix(".tmp").exists()


def test_ensure_demo_generates_once(tmp_path: Path) -> None:
    path = tmp_path / ".reconcile" / "demo.duckdb"
    assert demo.ensure_demo(path, 100, AS_OF) is True
    content = _content_md5(path)
    assert demo.ensure_demo(path, 500, AS_OF + timedelta(days=30)) is False
    assert _content_md5(path) == content
    assert _scalar(path, "SELECT count(*) FROM profiles") == 100


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        demo.generate(tmp_path / "x.duckdb", -1, as_of=AS_OF)
    with pytest.raises(ValueError):
        demo.generate(tmp_path / "x.duckdb", 10, as_of=AS_OF, table="profiles; DROP")
    with pytest.raises(ValueError):
        demo.generate(tmp_path / "x.tmp", 10, as_of=AS_OF)
    demo.generate(tmp_path / "x.duckdb", 10, as_of=AS_OF)
    with pytest.raises(ValueError):
        demo.churn(tmp_path / "x.duckdb", 1.5, seed=1)
