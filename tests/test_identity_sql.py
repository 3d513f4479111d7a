"""The SQL normalisers (``destinations.identity.sql``) give exactly what the Python ones give,
value by value, ``NULL`` for ``None``, in a real in-memory DuckDB."""

from __future__ import annotations

import string
import sys
from collections.abc import Iterator, Sequence

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from destinations.identity import (
    COUNTRIES,
    GOOGLE,
    MAILCHIMP,
    META,
    RAW,
    RULE_SETS,
    SANDBOX,
    TYPES,
    NormaliseContext,
    hashed_identifiers,
    records,
)
from destinations.identity.phones import SEPARATORS_FROM, SEPARATORS_TO, normalise_phone
from destinations.identity.sql import email_sql, normalised_sql, phone_sql, records_sql
from destinations.identity.text import INVISIBLE, WHITESPACE, sql_string
from destinations.identity.types import CANONICAL, normalise_email
from tests.test_identity_rules import VECTORS


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def _python(identifier: str, form: str, value: str | None, country: str) -> str | None:
    kind = TYPES[identifier]
    canonical = kind.normalise(value, NormaliseContext(country))
    if canonical is None or form == CANONICAL:
        return canonical
    return kind.forms[form](canonical)


_ALL_FORMS = [(name, form) for name, kind in TYPES.items() for form in (CANONICAL, *kind.forms)]


def _sql_values(
    con: duckdb.DuckDBPyConnection, expressions: Sequence[str], values: Sequence[str | None]
) -> list[list[str | None]]:
    """Each value (rows) through each expression (columns), from a real table column."""
    con.execute("CREATE OR REPLACE TEMP TABLE raw_values (i INTEGER, v VARCHAR)")
    con.executemany("INSERT INTO raw_values VALUES (?, ?)", list(enumerate(values)))
    rows = con.execute(f"SELECT {', '.join(expressions)} FROM raw_values ORDER BY i").fetchall()
    return [list(row) for row in rows]


def test_whitespace_is_what_python_strips() -> None:
    every = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert every == WHITESPACE


def test_a_string_literal_reads_back_every_character_the_rules_write(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # control characters go through chr(), the rest as they are (a chr() piece is folded
    # each time a query is bound); quotes doubled
    texts = [WHITESPACE, INVISIBLE, SEPARATORS_FROM, SEPARATORS_TO, "it's", "", "a\x01b\x7f\x85'"]
    got = con.execute(f"SELECT {', '.join(sql_string(t) for t in texts)}").fetchall()[0]
    assert list(got) == texts
    assert "chr(" not in sql_string(INVISIBLE.replace("\x85", "") + "\u00e9")


def test_published_vectors_in_sql(con: duckdb.DuckDBPyConnection) -> None:
    """Every vector of ``test_identity_rules`` gives the same value in SQL."""
    for identifier, form, country, raw, expected in VECTORS:
        sql = normalised_sql(identifier, "v", country, form)
        [[got]] = _sql_values(con, [sql], [raw])
        assert got == expected, (identifier, form, raw)


def test_convenience_functions(con: duckdb.DuckDBPyConnection) -> None:
    [[email, phone]] = _sql_values(
        con, [email_sql("v"), phone_sql("'0412 345 678'", "AU")], [" Test@Example.COM "]
    )
    assert (email, phone) == ("test@example.com", "+61412345678")
    with pytest.raises(ValueError, match="'XX'"):
        phone_sql("v", "XX")
    with pytest.raises(ValueError, match="'shoe_size'"):
        normalised_sql("shoe_size", "v")


# --- generated messy identifiers -----------------------------------------------------------

_PIECES = [
    *" \t\n\xa0\u2009\u3000\x1c",
    *"+()-./#,;@_'",
    "0", "00", "0011", "011", "010", "8", "06", "(0)", "1", "44", "61", "49", "7",
    "x", "X", "ext.", "ext", "Extension", ";ext=", "xt ",
    "Test", "@", "gmail.com", "GoogleMail.com", "example.co.uk", "first.last+tag", "..",
    "İ", "Σ", "ς", "ß", "ẞ", "é", "e\u0301", "Å", "ǅ", "Ω", "Ж", "李", "ı", "K",
    "１２", "١٢", "²", "Anne-Marie", "O'Brien", " van der ", "Mr.",
    "MALE", "Female", "m", "F", "woman", "mx",
    "1990", "2001", "1899", "2100", "02", "29", "30", "7", "13", "T00:00:00", " 00:00:00+00",
    "AU", "us", "SW1A", "1AA", "90210", "-1234",
    "aece52e7-03ee-455a-b3c4-e57283966239", "AECE52E7", "00000000-0000-0000-0000-000000000000",
    "New York", "california", "North Carolina",
]  # fmt: skip
# Python 3.11 knows Unicode 14, DuckDB's RE2/utf8proc a later version: characters assigned
# in only one of them (found only outside the Basic Multilingual Plane, e.g. CJK extension H)
# may be a letter on one side only. Generated text therefore stays in the BMP.
_bmp = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))
_messy = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.sampled_from(_PIECES), st.text(string.digits, max_size=12), st.text(_bmp, max_size=3)
        ),
        max_size=8,
    ).map("".join),
    st.text(_bmp, max_size=20),
)
_SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
_PHONE_COUNTRIES = ["AU", "US", "GB", "DE", "FR", "IT", "RU", "HU", "JP", "NZ", "SG", "BR"]


_ALL_SQL = [normalised_sql(name, "v", "AU", form) for name, form in _ALL_FORMS]


@settings(max_examples=25, deadline=None, suppress_health_check=_SLOW)
@given(values=st.lists(_messy, min_size=1, max_size=60))
def test_every_type_and_form_sql_equals_python(
    con: duckdb.DuckDBPyConnection, values: list[str | None]
) -> None:
    rows = _sql_values(con, _ALL_SQL, values)
    for value, row in zip(values, rows, strict=True):
        for (name, form), got in zip(_ALL_FORMS, row, strict=True):
            assert got == _python(name, form, value, "AU"), (name, form, value)


_phone_text = st.one_of(
    _messy,
    # a number that went through a float column: "61412345678.0", "412345678.00"
    st.tuples(
        st.sampled_from(["", " ", "\xa0", "+", " +"]),
        st.integers(0, 10**15),
        st.sampled_from([".0", ".00", ".000", ".5", ".05", ""]),
        st.sampled_from(["", " ", "\t"]),
    ).map(lambda t: f"{t[0]}{t[1]}{t[2]}{t[3]}"),
    st.lists(
        st.sampled_from(
            [*" -.()/+", "(0)", "00", "0", "x1", " ext. 9", *"0123456789"]
            + ["\xa0", "\u2011", "\u2013", "\ufeff", "\u202a", "\u200e", "\u3000"]
        ),
        max_size=20,
    ).map("".join),
)


@pytest.mark.parametrize("country", _PHONE_COUNTRIES)
@settings(max_examples=12, deadline=None, suppress_health_check=_SLOW)
@given(values=st.lists(_phone_text, min_size=1, max_size=80))
def test_phone_sql_equals_python(
    con: duckdb.DuckDBPyConnection, country: str, values: list[str | None]
) -> None:
    rows = _sql_values(con, [phone_sql("v", country)], values)
    for value, [got] in zip(values, rows, strict=True):
        assert got == _python("phone", CANONICAL, value, country), value


def test_phone_sql_equals_python_for_every_country(con: duckdb.DuckDBPyConnection) -> None:
    """National, international and trunk-prefixed spellings in every country we know."""
    samples = [
        "0412 345 678", "412345678", "61412345678", "+61 (0)412 345 678", "0011 44 20 7946 0958",
        "(415) 555-2671", "1-415-555-2671", "011 44 20 7946 0958", "+44 (0)20 7946 0958",
        "0044 20 7946 0958", "030 123456", "06 1234 5678", "8 (812) 123-45-67", "090-1234-5678",
        "9123 4567", "+49 (0)30 123456", "0 800 123 456", "+0044 20", "555-2671", "",
        # a "+" after leading spaces or "(", and one where no "+" may stand
        "( +61 412 345 678", "(+61) 412 345 678", " \t+ 61 412 345 678", "0412+345678",
        "+61 412 345 678 x12", "++61 412 345 678",
    ]  # fmt: skip
    for country in sorted(COUNTRIES):
        rows = _sql_values(con, [phone_sql("v", country)], samples)
        got = [row[0] for row in rows]
        assert got == [_python("phone", CANONICAL, s, country) for s in samples], country


# --- whole records -------------------------------------------------------------------------

_members = st.fixed_dictionaries({name: _messy for name in TYPES})


@pytest.mark.parametrize("fi_column", [False, True], ids=["no-fi-column", "fi-column"])
@pytest.mark.parametrize("rules", [META, GOOGLE, SANDBOX, MAILCHIMP, RAW], ids=lambda r: r.name)
@settings(max_examples=8, deadline=None, suppress_health_check=_SLOW)
@given(members=st.lists(_members, min_size=1, max_size=30), data=st.data())
def test_records_sql_equals_python(rules, fi_column, members, data) -> None:  # type: ignore[no-untyped-def]
    """With or without a first_initial column: a member with none falls back to first_name
    (a NULL in the column as well as no column), as in Python."""
    accepted = data.draw(st.permutations(rules.identifiers))
    columns = {name: f"m.{name}" for name in TYPES if fi_column or name != "first_initial"}
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE m (i INTEGER, {', '.join(f'{n} VARCHAR' for n in columns)})")
        con.executemany(
            f"INSERT INTO m VALUES ({', '.join('?' * (len(columns) + 1))})",
            [[i, *(member[n] for n in columns)] for i, member in enumerate(members)],
        )
        sql = records_sql(accepted, rules, columns, "GB")
        got = [row[0] for row in con.execute(f"SELECT {sql} FROM m ORDER BY i").fetchall()]
    for member, row in zip(members, got, strict=True):
        if not fi_column:  # no column of its own: both sides fall back to first_name
            member = {**member, "first_initial": None}
        assert tuple(row) == records(member, accepted, rules, NormaliseContext("GB"))


def test_sandbox_records_sql_equals_hashed_identifiers(con: duckdb.DuckDBPyConnection) -> None:
    members = [
        {"email": " Test@Example.com ", "phone": "0412 345 678"},
        {"email": "nope", "phone": "+61412345678"},
        {"email": None, "phone": None},
    ]
    con.execute("CREATE OR REPLACE TEMP TABLE p (i INTEGER, email VARCHAR, phone VARCHAR)")
    con.executemany(
        "INSERT INTO p VALUES (?, ?, ?)",
        [[i, m["email"], m["phone"]] for i, m in enumerate(members)],
    )
    for accepted in (("email", "phone"), ("phone", "email"), ("email",)):
        sql = records_sql(accepted, SANDBOX, {"email": "p.email", "phone": "p.phone"}, "AU")
        got = [tuple(r[0]) for r in con.execute(f"SELECT {sql} FROM p ORDER BY i").fetchall()]
        assert got == [hashed_identifiers(m, accepted, "AU") for m in members]
    assert con.execute(f"SELECT {records_sql((), SANDBOX, {}, 'AU')}").fetchone() == ([],)


def test_every_rule_set_has_sql() -> None:
    for rules in RULE_SETS.values():
        assert records_sql(rules.identifiers, rules, {n: n for n in TYPES}, "US")


@settings(max_examples=25, deadline=None, suppress_health_check=_SLOW)
@given(values=st.lists(_phone_text, min_size=1, max_size=80))
def test_the_plans_phone_estimate_counts_the_fewest_digits_a_phone_can_have(
    con: duckdb.DuckDBPyConnection, values: list[str | None]
) -> None:
    # the plan's cheap "could match" test for a phone: at least MIN_DIGITS ASCII digits
    # anywhere (5: no country's rules normalise a phone written with fewer)
    from destinations.identity.phones import MIN_DIGITS
    from reconciler.plan.terms import matchable_sql
    from reconciler.workspace.spec import ProfilesTable

    profiles = ProfilesTable(table="raw_values", key="i", identifiers={"phone": "v"})
    expr = matchable_sql(profiles, ("phone",)).replace("p.", "raw_values.")
    rows = _sql_values(con, [f"coalesce({expr}, false)"], values)
    for value, [got] in zip(values, rows, strict=True):
        assert got == (sum(c in string.digits for c in value or "") >= MIN_DIGITS), value


# well-formed e-mails too (random pieces seldom make one), around whitespace and in capitals
_email_text = st.one_of(
    _messy,
    st.tuples(
        st.sampled_from(["", " ", "\t", "\xa0", "\ufeff", " \u200b"]),
        st.from_regex(r"[A-Za-z0-9._+]{1,10}", fullmatch=True),
        st.sampled_from(["gmail.com", "GoogleMail.com", "Example.co.uk", "x.io"]),
    ).map(lambda t: f"{t[0]}{t[1]}@{t[2]}{t[0]}"),
)
_send_members = st.fixed_dictionaries(
    {name: {"phone": _phone_text, "email": _email_text}.get(name, _messy) for name in TYPES}
)


@pytest.mark.parametrize("fi_column", [False, True], ids=["no-fi-column", "fi-column"])
@pytest.mark.parametrize("rules", [META, GOOGLE, SANDBOX, MAILCHIMP, RAW], ids=lambda r: r.name)
@settings(max_examples=8, deadline=None, suppress_health_check=_SLOW)
@given(members=st.lists(_send_members, min_size=1, max_size=30), data=st.data())
def test_send_sql_equals_python(rules, fi_column, members, data) -> None:  # type: ignore[no-untyped-def]
    """The send table's query (apply's hot path): each member's records and each encoding's
    value, as the Python rules give them (:func:`encode`), NULL where there is nothing to
    send; first_initial falls back to first_name, with or without a column of its own."""
    from destinations.identity.rules import encode
    from destinations.identity.send_query import send_sql

    accepted = data.draw(st.permutations(rules.identifiers))
    country = data.draw(st.sampled_from(_PHONE_COUNTRIES))
    columns = {name: name for name in TYPES if fi_column or name != "first_initial"}
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE m (i INTEGER, {', '.join(f'{n} VARCHAR' for n in columns)})")
        con.executemany(
            f"INSERT INTO m VALUES ({', '.join('?' * (len(columns) + 1))})",
            [[i, *(member[n] for n in columns)] for i, member in enumerate(members)],
        )
        sql = send_sql("m", rules.encodings, accepted, rules, columns, country)
        values = ", ".join(f"v{k}" for k in range(len(rules.encodings)))
        got = con.execute(f"SELECT rec, {values} FROM ({sql}) ORDER BY i").fetchall()
    for member, (rec, *sent) in zip(members, got, strict=True):
        if not fi_column:  # no column of its own: both sides fall back to first_name
            member = {**member, "first_initial": None}
        context = NormaliseContext(country)
        assert tuple(rec) == records(member, accepted, rules, context)
        python = {e.encoding: e.value for e in encode(member, accepted, rules, context)}
        for encoding, value in zip(rules.encodings, sent, strict=True):
            assert value == python.get(encoding), encoding


@pytest.mark.parametrize(
    "raw",
    [
        "\ufeffjane@example.com",
        "ja\u200bne@example.com",
        "jane@exam\xadple.com",
        "\u200ejane@example.com\u200f ",
    ],
)
def test_invisible_characters_leave_an_e_mail_before_it_is_hashed(con, raw: str) -> None:
    """A byte order mark from a CSV export or a zero-width space from copy-paste would make
    an address no platform matches: both sides drop them and hash the address itself."""
    assert normalise_email(raw) == "jane@example.com"
    [[got]] = _sql_values(con, [email_sql("v")], [raw])
    assert got == "jane@example.com"


@pytest.mark.parametrize(
    "raw",
    ["jane@example.com\x00", "\x07jane@example.com", "ja\x1bne@example.com", "jane@ex\x7f.com"],
)
def test_an_e_mail_holding_a_control_character_is_no_e_mail(con, raw: str) -> None:
    """A NUL or an escape left by a broken export made a hash that matches nobody while the
    plan counted the member as matchable: both sides now find no e-mail in it."""
    assert normalise_email(raw) is None
    [[got]] = _sql_values(con, [email_sql("v")], [raw])
    assert got is None


@pytest.mark.parametrize(
    "raw",
    [
        "0412\xa0345\xa0678",
        "\u202a0412 345 678\u202c",
        "\ufeff0412-345-678",
        "0412\u2011345\u2011678",
        "\u200e+61 412 345 678",
    ],
)
def test_other_spaces_dashes_and_invisible_characters_in_a_phone(con, raw: str) -> None:
    """A non-breaking space or hyphen, a BOM or a direction mark (spreadsheets and
    right-to-left text put them there) made the phone unusable: they are read as a space, a
    "-" and nothing, on both sides."""
    assert normalise_phone(raw, "AU") == "+61412345678"
    [[got]] = _sql_values(con, [phone_sql("v", "AU")], [raw])
    assert got == "+61412345678"


@pytest.mark.parametrize(
    "raw,country,expected",
    [
        (" 61412345678.0", "AU", "+61412345678"),
        ("61412345678.00\t", "AU", "+61412345678"),
        ("9123.0000", "SG", "+6591230000"),
        ("+61412345678.0", "AU", "+61412345678"),
        ("+61412345678.0", "US", "+61412345678"),
        (" +61412345678.00 ", "AU", "+61412345678"),
    ],
)
def test_a_float_phone_with_spaces_around_and_a_dotted_number(con, raw, country, expected):
    """Spaces around a float's text do not turn its ".0" into a digit; "9123.0000" is a
    number written with a dot (a float column writes ".0" or a DECIMAL ".00"); a "+" in
    front of a float's text keeps the number international."""
    assert normalise_phone(raw, country) == expected
    [[got]] = _sql_values(con, [phone_sql("v", country)], [raw])
    assert got == expected


def test_the_fingerprint_covers_the_column_a_type_falls_back_to() -> None:
    """`first_initial` accepted without `first_name`: a member with no initial of its own is
    sent the first name's, so a changed first name must change the fingerprint (and be
    sent); with its own initial, the first name is still in it (a NULL later falls back)."""
    from reconciler.plan import terms
    from reconciler.workspace.spec import ProfilesTable

    profiles = ProfilesTable(
        table="p",
        key="k",
        identifiers={"email": "e", "first_name": "fn", "first_initial": "fi"},
        attributes=[],
    )
    fp = terms.fingerprint_sql(profiles, ("email", "first_initial"), [], "AU")
    with duckdb.connect() as con:
        con.execute("CREATE TABLE p (k VARCHAR, e VARCHAR, fn VARCHAR, fi VARCHAR)")
        con.execute(
            "INSERT INTO p VALUES ('1', 'a@x.io', 'Anne', NULL), ('2', 'a@x.io', 'Zed', NULL)"
        )
        first, second = (r[0] for r in con.execute(f"SELECT {fp} FROM p p ORDER BY k").fetchall())
    assert first != second
    only_email = ProfilesTable(table="p", key="k", identifiers={"email": "e"}, attributes=[])
    assert "fn" not in terms.fingerprint_sql(only_email, ("email", "first_initial"), [], "AU")


@pytest.mark.parametrize(
    ("member", "sent"),
    [
        ({"email": "bob@localhost", "first_name": "Bob", "postal_code": "3000"}, False),
        ({"email": None, "phone": "0412 34", "first_name": "Bob", "country": "AU"}, False),
        ({"madid": "not-a-uuid", "last_name": "Bad"}, False),
        ({"email": "bob@example.com", "first_name": "Bob", "postal_code": "3000"}, True),
        ({"external_id": "EXT-1", "first_name": "Bob"}, True),
    ],
)
def test_names_and_address_fields_are_never_sent_alone(member, sent) -> None:
    """Meta matched `bob@localhost` + name + postcode as the name and postcode alone: a member
    needs a usable e-mail, phone, MADID or external id, or it has no records (not sent,
    counted unsendable) — Python, the records SQL and the send query alike."""
    from destinations.identity.send_query import send_sql

    accepted = ("email", "phone", "madid", "external_id", "first_name", "last_name",
                "postal_code", "country")  # fmt: skip
    columns = {t: t for t in accepted}
    python = records(member, accepted, META, NormaliseContext("AU"))
    assert bool(python) is sent
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE m ({', '.join(f'{c} VARCHAR' for c in columns)})")
        con.execute(
            f"INSERT INTO m VALUES ({', '.join('?' * len(columns))})",
            [member.get(c) for c in columns],
        )
        [[by_records]] = con.execute(
            f"SELECT {records_sql(accepted, META, columns, 'AU')} FROM m"
        ).fetchall()
        query = send_sql("m", META.encodings, accepted, META, columns, "AU")
        rec, *values = con.execute(
            f"SELECT rec, {', '.join(f'v{i}' for i in range(len(META.encodings)))} FROM ({query})"
        ).fetchall()[0]
    assert tuple(by_records) == tuple(rec) == python
    assert any(v is not None for v in values) is sent
