"""The deterministic demo customer database.

Used by the example workspace (``source.demo: true`` generates it on first use, so
``reconcile plan`` works on a fresh machine with no server) and by the benchmarks.

Everything runs inside one DuckDB ``INSERT ... SELECT`` over ``range(n)``; each row's values
are pure functions of ``(seed, i)`` through MD5, so the same ``(profiles, as_of, seed)`` give
the same table contents on every machine and DuckDB version (MD5, integer arithmetic and the
correctly rounded ``sqrt`` only; no ``random()``, no ``hash()``, whose value may change
between DuckDB releases). ``customer_id`` depends on ``i`` only, so keys are the same for
every seed.

The table (``profiles`` by default), 11 columns::

    customer_id       VARCHAR        UUID-v4-shaped, 36 chars, unique
    email             VARCHAR        ~3% NULL; ~3% upper case, ~3% mixed case, ~3% padded
                                     with spaces (exercises normalisation); reserved
                                     example.* domains only, so nothing can reach a real inbox
    phone             VARCHAR        ~10% NULL; AU numbers mixed national / international
                                     ('0412 345 678', '0412345678', '+61 412 345 678',
                                     '+61412345678', '(02) 9123 4567'); NZ, US and GB numbers
                                     always international (as foreign numbers usually are)
    first_name        VARCHAR
    last_name         VARCHAR
    country           VARCHAR        ~80% AU, 8% NZ, 7% US, 5% GB
    first_order_date  DATE           in the 3 years before as_of, skewed to recent;
                                     ~4% in the 7 days before as_of
    last_order_date   DATE           >= first_order_date, < as_of
    order_count       INTEGER        >= 1 (~45% one-time buyers; 1 for new customers)
    total_spend       DECIMAL(12,2)  > 0
    email_consent     BOOLEAN        ~85% true

Every date is strictly before ``as_of`` (the data is "as of the start of that day"). ``as_of``
is a fixed anchor: pass the plan's date the first time and keep the file (see
:func:`ensure_demo`); the anchor and generator parameters are recorded as the table comment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from reconciler.sources.demo_rows import SALT as _SALT
from reconciler.sources.demo_rows import select_sql as _select_sql

__all__ = ["COLUMNS", "churn", "ensure_demo", "generate"]

#: Generator version, recorded in the table comment. Bump it whenever a change alters data.
VERSION = 1

COLUMNS: tuple[tuple[str, str], ...] = (
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
)

_NOT_NULL = {c for c, _ in COLUMNS} - {"email", "phone"}

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def generate(
    path: Path,
    profiles: int,
    *,
    as_of: date,
    seed: int = 7,
    table: str = "profiles",
    threads: int | None = None,
    memory_limit: str | None = None,
) -> None:
    """Create the demo database at ``path`` (replacing any file there) with ``profiles`` rows.

    Written to ``path.with_suffix('.tmp')`` and moved into place with ``os.replace`` only when
    complete, so a killed process never leaves a half-built database at ``path``. Builders of
    one path are serialised by ``flock`` on ``<path>.lock`` (left in place, like the state
    lock).
    """
    path, profiles, as_of, seed, table = _checked(path, profiles, as_of, seed, table)
    with _build_lock(path):
        _build(path, profiles, as_of, seed, table, threads, memory_limit)


def ensure_demo(
    path: Path,
    profiles: int,
    as_of: date,
    *,
    seed: int = 7,
    table: str = "profiles",
    threads: int | None = None,
    memory_limit: str | None = None,
) -> bool:
    """Generate the demo database unless ``path`` exists; True if it generated.

    ``as_of`` only matters the first time: the file is kept afterwards, so its dates stay
    anchored to that first date (read it back from the table comment if needed).
    """
    if Path(path).exists():
        return False
    path, profiles, as_of, seed, table = _checked(path, profiles, as_of, seed, table)
    with _build_lock(path):
        if path.exists():  # another process built it while we waited
            return False
        _build(path, profiles, as_of, seed, table, threads, memory_limit)
    return True


def churn(
    path: Path,
    share: float,
    *,
    seed: int,
    table: str = "profiles",
    country: str = "AU",
    min_spend: float | Decimal = 100,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> None:
    """Change membership of ``country = '<country>' AND total_spend >= <min_spend>`` in place.

    With ``m`` current members, ``round(share * m)`` rows change membership: half of them
    (rounded down) leave and the rest enter. Leaving rows are members whose ``total_spend`` is
    lowered to below ``min_spend``; entering rows are non-members (those of ``country`` first)
    whose ``total_spend`` is raised to ``min_spend`` or more and whose ``country`` is set to
    ``country`` (a no-op for rows already there; other countries are only used when the
    country has too few non-members). Only ``total_spend`` and ``country`` change; keys,
    identifiers and every other column are untouched, so every churned row changes membership
    and nothing else changes. The picks are a deterministic function of ``(seed, key)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    share = float(share)
    if not 0 <= share <= 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    seed = _int(seed, "seed")
    table = _table_name(table)
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise ValueError(f"country must be a two-letter upper-case code, got {country!r}")
    min_cents = int(Decimal(str(min_spend)) * 100)
    if Decimal(min_cents) != Decimal(str(min_spend)) * 100 or min_cents <= 0:
        raise ValueError(f"min_spend must be a positive amount in cents, got {min_spend}")
    if min_cents > 10**11:
        raise ValueError(f"min_spend too large for DECIMAL(12,2): {min_spend}")

    member = f"(country = '{country}' AND total_spend >= {min_cents} * 0.01)"
    pick_key = f"md5(concat('{_SALT}-churn:', {seed}, ':', customer_id))"
    con = _connect(path, threads, memory_limit)
    try:
        con.execute("BEGIN")
        (members,) = con.execute(f'SELECT count(*) FROM "{table}" WHERE {member}').fetchall()[0]
        total = round(share * members)
        leave = total // 2
        enter = total - leave
        con.execute(
            f"""CREATE TEMP TABLE __demo_churn AS
            SELECT customer_id, true AS leaving, {pick_key} AS k FROM (
              SELECT customer_id FROM "{table}" WHERE {member}
              ORDER BY {pick_key}, customer_id LIMIT {leave})
            UNION ALL
            SELECT customer_id, false AS leaving, {pick_key} AS k FROM (
              SELECT customer_id FROM "{table}" WHERE {member} IS NOT TRUE
              ORDER BY country <> '{country}', {pick_key}, customer_id LIMIT {enter})"""
        )
        # leaving: a spend in [20%, 90%) of the threshold; entering: threshold + [0, 200.00)
        con.execute(
            f"""UPDATE "{table}" AS p SET
              total_spend = CASE WHEN c.leaving
                THEN (({min_cents} * (200 + (md5_number(c.k) >> 64)::UBIGINT % 700)::BIGINT) // 1000) * 0.01
                ELSE ({min_cents} + ((md5_number(c.k) >> 64)::UBIGINT % 20000)::BIGINT) * 0.01 END,
              country = CASE WHEN c.leaving THEN p.country ELSE '{country}' END
            FROM __demo_churn AS c WHERE p.customer_id = c.customer_id"""
        )
        con.execute("DROP TABLE __demo_churn")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()  # an uncommitted transaction (on error) is rolled back here


# --------------------------------------------------------------------------- internals


def _build(
    path: Path,
    profiles: int,
    as_of: date,
    seed: int,
    table: str,
    threads: int | None,
    memory_limit: str | None,
) -> None:
    tmp = path.with_suffix(".tmp")
    _remove(tmp, _wal(tmp))
    try:
        con = _connect(tmp, threads, memory_limit)
        try:
            columns = ",\n  ".join(
                f"{name} {type_}{' NOT NULL' if name in _NOT_NULL else ''}"
                for name, type_ in COLUMNS
            )
            con.execute(f'CREATE TABLE "{table}" (\n  {columns}\n)')
            # range() is a single-threaded source; a scan of a materialised table is parallel
            con.execute(f"CREATE TEMP TABLE __demo_ids AS SELECT range AS i FROM range({profiles})")
            con.execute(f'INSERT INTO "{table}" {_select_sql("__demo_ids", as_of, seed)}')
            con.execute("DROP TABLE __demo_ids")
            comment = (
                f"reconciler demo v{VERSION}: profiles={profiles} seed={seed} "
                f"as_of={as_of.isoformat()}"
            )
            con.execute(f"COMMENT ON TABLE \"{table}\" IS '{comment}'")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        _remove(_wal(path))  # a stale WAL next to the old file must not replay onto the new
        os.replace(tmp, path)
    finally:
        _remove(tmp, _wal(tmp))


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise builders of one path: two first runs at once must not share ``.tmp``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _connect(
    path: Path, threads: int | None, memory_limit: str | None
) -> duckdb.DuckDBPyConnection:
    config: dict[str, object] = {"preserve_insertion_order": True}
    if threads is not None:
        config["threads"] = _int(threads, "threads")
    if memory_limit is not None:
        config["memory_limit"] = str(memory_limit)
    con = duckdb.connect(str(path), config=config)  # type: ignore[arg-type]
    con.execute("SET enable_progress_bar = false")
    return con


def _checked(
    path: Path, profiles: int, as_of: date, seed: int, table: str
) -> tuple[Path, int, date, int, str]:
    """The generator's arguments, validated (shared by generate and ensure_demo)."""
    path = Path(path)
    if path.suffix == ".tmp":
        raise ValueError(f"demo database path must not end in .tmp: {path}")
    return (
        path,
        _non_negative_int(profiles, "profiles"),
        _as_date(as_of),
        _int(seed, "seed"),
        _table_name(table),
    )


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _table_name(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise ValueError(f"invalid table name {table!r}")
    return table


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return value


def _non_negative_int(value: object, what: str) -> int:
    value = _int(value, what)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _as_date(value: date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if not isinstance(value, date):
        raise TypeError(f"as_of must be a date, got {value!r}")
    return value
