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

FIRST_NAMES = (
    "Olivia", "Charlotte", "Amelia", "Isla", "Mia", "Ava", "Grace", "Chloe", "Zoe", "Ella",
    "Sophie", "Ruby", "Emily", "Hannah", "Lucy", "Sarah", "Jessica", "Emma", "Priya", "Mei",
    "Aisha", "Anh", "Sofia", "Maria", "Leilani", "Kate", "Rebecca", "Laura", "Nicole", "Anna",
    "Jack", "Oliver", "William", "Noah", "Thomas", "James", "Lucas", "Henry", "Liam", "Ethan",
    "Samuel", "Daniel", "Matthew", "Joshua", "Benjamin", "Ryan", "Luke", "Nathan", "Michael",
    "David", "Arjun", "Wei", "Minh", "Mohammed", "Ali", "Tane", "Lachlan", "Cooper", "Mason",
    "Harrison", "Zac", "Jean-Luc", "Chris", "Ben",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin",
    "Anderson", "Thompson", "Nguyen", "Tran", "Le", "Pham", "Thomas", "Walker", "Harris", "Lee",
    "Ryan", "Robinson", "Kelly", "King", "Davis", "Wright", "Evans", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Patel", "Singh", "Kumar", "Shah", "Wang", "Li", "Zhang",
    "Chen", "Liu", "Huang", "Kim", "Park", "O'Brien", "O'Connor", "McDonald", "Murphy",
    "Mitchell", "Campbell", "Stewart", "Morris", "Cook", "Bell", "Young", "Scott", "Edwards",
    "Hughes", "Ward", "Baker", "Turner", "Collins", "Cooper", "Morgan", "Bailey", "Reid",
    "Ngata", "Parata", "Russo", "Rossi", "Papadopoulos", "Costa", "Silva", "Garcia", "Lopez",
    "Muller", "Smith-Jones", "Van Dyk", "Ahmed", "Khan",
)  # fmt: skip

# Reserved (RFC 2606) domains only: the demo data must never reach a real mailbox.
EMAIL_DOMAINS = (
    "example.com", "example.com", "example.com", "example.net", "example.net",
    "example.org", "mail.example.com", "inbox.example.net", "post.example.org", "example.org",
)  # fmt: skip

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ID_SALT = "reconciler-demo-customer:"
_SALT = "reconciler-demo"
_MASK64 = (1 << 64) - 1


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


def _select_sql(source: str, as_of: date, seed: int) -> str:
    """The SELECT producing the table's rows from ``source``, a relation of ``i`` (0..n-1).

    Randomness: three MD5s of ``(seed, i)`` give six 64-bit words ``r0..r5``; each draw reads
    its own bit field (``bits``), so draws are independent. Changing a field changes data:
    bump :data:`VERSION`.
    """

    def bits(word: int, offset: int, width: int) -> str:
        assert offset >= 0 and offset + width <= 64
        return f"((r{word} >> {offset}) & {(1 << width) - 1})::BIGINT"

    def permille(word: int, offset: int) -> str:
        # 0..999 from 10 bits, scaled (not reduced mod 1000) so thresholds stay unbiased
        return f"({bits(word, offset, 10)} * 1000 >> 10)"

    def sql_list(values: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"

    def local(name: str, lower: bool) -> str:
        name = re.sub(r"[^A-Za-z]", "", name)
        return name.lower() if lower else name

    first, last = FIRST_NAMES, LAST_NAMES
    first_lo = sql_list([local(x, True) for x in first])
    last_lo = sql_list([local(x, True) for x in last])
    first_mx = sql_list([local(x, False) for x in first])
    last_mx = sql_list([local(x, False) for x in last])
    day0 = f"DATE '{as_of.isoformat()}'"
    words = ", ".join(
        f"(h{k} >> 64)::UBIGINT AS r{2 * j}, (h{k} & {_MASK64}::UHUGEINT)::UBIGINT AS r{2 * j + 1}"
        for j, k in enumerate("abc")
    )
    hashes = ", ".join(f"md5_number(concat('{_SALT}:', {seed}, ':{k}:', i)) AS h{k}" for k in "abc")
    return f"""
WITH raw AS (
  SELECT i, md5(concat('{_ID_SALT}', i)) AS idh, {hashes}
  FROM {source}
), w AS (
  SELECT i, idh, {words} FROM raw
), d AS (
  SELECT
    i, idh,
    1 + {bits(0, 0, 16)} % {len(first)} AS fi,
    1 + {bits(0, 16, 16)} % {len(last)} AS li,
    {permille(0, 32)} AS country_draw,
    {permille(0, 42)} AS consent_draw,
    {permille(0, 52)} AS email_null,
    {bits(1, 0, 8)} % 8 AS email_style,
    1 + {bits(1, 8, 16)} % 9999 AS email_num,
    1 + {bits(1, 24, 10)} % {len(EMAIL_DOMAINS)} AS email_domain,
    {permille(1, 34)} AS email_mess,
    {permille(1, 46)} AS phone_null,
    {permille(2, 0)} AS phone_fmt,
    lpad(({bits(2, 10, 30)} % 1000000000)::VARCHAR, 9, '0') AS pd,
    {bits(2, 40, 8)} AS phone_area,
    {permille(2, 48)} AS recent_draw,
    {bits(3, 0, 10)} % 7 AS recent_day,
    {bits(3, 10, 20)} AS age_draw,
    {permille(3, 30)} AS one_time_draw,
    {bits(3, 40, 8)} % 4 AS count_base,
    {permille(3, 48)} AS heavy_draw,
    {bits(4, 0, 16)} % 25 AS count_extra,
    {bits(4, 16, 10)} AS last_draw,
    {bits(4, 26, 16)} % 9000 AS aov_draw,
    {permille(4, 42)} AS big_spender_draw,
    {bits(5, 0, 20)} % 30000 AS aov_extra,
    {bits(5, 20, 10)} % 100 AS spend_cents
  FROM w
), e AS (
  SELECT *,
    CASE
      WHEN country_draw < 800 THEN 'AU' WHEN country_draw < 880 THEN 'NZ'
      WHEN country_draw < 950 THEN 'US' ELSE 'GB'
    END AS country,
    -- ~3% are new customers (first order in the last 7 days); the rest are spread over 3
    -- years with density falling linearly from recent to old (a growing business).
    CASE
      WHEN recent_draw < 30 THEN 1 + recent_day
      ELSE 1 + least(1094, floor(1095 * (1 - sqrt(age_draw / 1048576.0))))
    END::INTEGER AS first_age
  FROM d
), o AS (
  SELECT *,
    -- at most one order a week since the first one
    CASE WHEN one_time_draw < 450 THEN 1
      ELSE least(2 + count_base + CASE WHEN heavy_draw < 150 THEN count_extra ELSE 0 END,
                 1 + first_age // 7)
    END::INTEGER AS order_count
  FROM e
)
SELECT
  concat_ws('-', substr(idh, 1, 8), substr(idh, 9, 4), '4' || substr(idh, 14, 3),
    substr('89ab', 1 + (strpos('0123456789abcdef', substr(idh, 17, 1)) - 1) % 4, 1)
      || substr(idh, 18, 3),
    substr(idh, 21, 12)) AS customer_id,
  CASE
    WHEN email_null < 30 THEN NULL
    -- ~1% of profiles share an inbox in pairs (i = 2g, 2g + 1): a household address
    WHEN (i // 2 * 2654435761) % 4294967296 >> 22 < 10
      THEN concat('household', i // 2, '@', {sql_list(EMAIL_DOMAINS)}[1 + i // 2 % {len(EMAIL_DOMAINS)}])
    WHEN email_mess < 30 THEN upper(local_lo || '@' || domain)
    WHEN email_mess < 60 THEN local_mx || '@' || domain
    WHEN email_mess < 75 THEN ' ' || local_lo || '@' || domain
    WHEN email_mess < 90 THEN local_lo || '@' || domain || ' '
    ELSE local_lo || '@' || domain
  END AS email,
  CASE
    WHEN phone_null < 100 THEN NULL
    WHEN country = 'AU' THEN CASE
      WHEN phone_fmt < 350 THEN concat('04', substr(pd, 2, 2), ' ', substr(pd, 4, 3), ' ',
                                       substr(pd, 7, 3))
      WHEN phone_fmt < 500 THEN concat('04', substr(pd, 2, 8))
      WHEN phone_fmt < 750 THEN concat('+61 4', substr(pd, 2, 2), ' ', substr(pd, 4, 3), ' ',
                                       substr(pd, 7, 3))
      WHEN phone_fmt < 850 THEN concat('+614', substr(pd, 2, 8))
      WHEN phone_fmt < 950 THEN concat('(0', ['2', '3', '7', '8'][1 + phone_area % 4], ') ',
                                       3 + phone_area // 4 % 7, substr(pd, 3, 3), ' ',
                                       substr(pd, 6, 4))
      ELSE concat('0', ['2', '3', '7', '8'][1 + phone_area % 4], ' ', 3 + phone_area // 4 % 7,
                  substr(pd, 3, 3), ' ', substr(pd, 6, 4))
    END
    WHEN country = 'NZ' THEN concat('+64 2', ['1', '2', '7'][1 + phone_area % 3], ' ',
                                    substr(pd, 3, 3), ' ', substr(pd, 6, 4))
    WHEN country = 'US' THEN concat('+1 (',
      ['212', '312', '415', '512', '617', '206', '303', '646'][1 + phone_area % 8], ') ',
      2 + phone_area % 8, substr(pd, 1, 2), '-', substr(pd, 6, 4))
    ELSE concat('+44 7', substr(pd, 1, 3), ' ', substr(pd, 4, 6))
  END AS phone,
  {sql_list(first)}[fi] AS first_name,
  {sql_list(last)}[li] AS last_name,
  country,
  {day0} - first_age AS first_order_date,
  -- repeat buyers: last order between first order and yesterday, skewed to recent
  {day0} - first_age + CASE WHEN order_count = 1 THEN 0
    ELSE (first_age * (1048576 - (1024 - last_draw) * (1024 - last_draw))) // 1048576
  END::INTEGER AS last_order_date,
  order_count,
  ((order_count * (1200 + aov_draw + CASE WHEN big_spender_draw < 100 THEN aov_extra ELSE 0 END)
    + spend_cents) * 0.01)::DECIMAL(12, 2) AS total_spend,
  consent_draw < 850 AS email_consent
FROM (
  SELECT *,
    {sql_list(EMAIL_DOMAINS)}[email_domain] AS domain,
    CASE email_style
      WHEN 0 THEN concat({first_lo}[fi], '.', {last_lo}[li], email_num)  -- the common style
      WHEN 1 THEN concat({first_lo}[fi], '.', {last_lo}[li], email_num)
      WHEN 2 THEN concat({first_lo}[fi], {last_lo}[li], email_num)
      WHEN 3 THEN concat({first_lo}[fi], '.', {last_lo}[li], '+', email_num)
      WHEN 4 THEN concat({first_lo}[fi], '_', {last_lo}[li], email_num)
      WHEN 5 THEN concat(substr({first_lo}[fi], 1, 1), {last_lo}[li], email_num)
      WHEN 6 THEN concat({first_lo}[fi], substr({last_lo}[li], 1, 1), email_num)
      ELSE concat({last_lo}[li], '.', {first_lo}[fi], email_num)
    END AS local_lo,
    CASE email_style
      WHEN 5 THEN concat(substr({first_mx}[fi], 1, 1), {last_mx}[li], email_num)
      ELSE concat({first_mx}[fi], '.', {last_mx}[li], email_num)
    END AS local_mx
  FROM o
)
"""


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
