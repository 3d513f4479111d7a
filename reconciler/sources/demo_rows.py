"""The rows of the demo customer database (:mod:`reconciler.sources.demo`) as one SELECT over
``range(n)``: names, e-mail domains and every draw from MD5 bit fields of ``(seed, i)``.
Changing anything here changes the data: bump :data:`reconciler.sources.demo.VERSION`."""

from __future__ import annotations

import re
from datetime import date

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

ID_SALT = "reconciler-demo-customer:"
SALT = "reconciler-demo"
_MASK64 = (1 << 64) - 1


def select_sql(source: str, as_of: date, seed: int) -> str:
    """The SELECT producing the table's rows from ``source``, a relation of ``i`` (0..n-1).

    Randomness: three MD5s of ``(seed, i)`` give six 64-bit words ``r0..r5``; each draw reads
    its own bit field (``bits``), so draws are independent. Changing a field changes data:
    bump :data:`reconciler.sources.demo.VERSION`.
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
    hashes = ", ".join(f"md5_number(concat('{SALT}:', {seed}, ':{k}:', i)) AS h{k}" for k in "abc")
    return f"""
WITH raw AS (
  SELECT i, md5(concat('{ID_SALT}', i)) AS idh, {hashes}
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
