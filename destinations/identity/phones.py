"""Phone numbers to E.164 (``+61412345678``) without a parsing library at runtime.

This runs once per member sent (up to tens of millions per apply), so it is a few string
operations and at most two precompiled regular expressions. ``tests/test_identity.py``
cross-checks the rules against the ``phonenumbers`` library; the regular expressions here are
shared with the SQL version (:mod:`destinations.identity.sql`), which must give the same
answer for every input.
"""

from __future__ import annotations

import re

from destinations.identity.text import ASCII_SPACE, INVISIBLE, WHITESPACE, char_class

__all__ = [
    "COUNTRIES",
    "EXTENSION_PATTERN",
    "FLOAT_DIGITS",
    "SEPARATORS_FROM",
    "SEPARATORS_TO",
    "PHONE_PATTERN",
    "ZERO_TRUNK_CODES",
    "country_rules",
    "normalise_phone",
]

# country -> (calling code, trunk prefix or None, international dialling prefix, possible
# lengths of the national significant number). Calling codes, trunk prefixes and lengths
# come from libphonenumber's metadata (NANP narrowed to 10 digits); the tests check the
# resulting rules against the `phonenumbers` library for every country listed.
COUNTRIES: dict[str, tuple[str, str | None, str, frozenset[int]]] = {
    code: (cc, trunk, idd, frozenset(lengths))
    for code, (cc, trunk, idd, lengths) in {
        "AE": ("971", "0", "00", (5, 6, 7, 8, 9, 10, 11, 12)),
        "AT": ("43", "0", "00", (4, 5, 6, 7, 8, 9, 10, 11, 12, 13)),
        "AU": ("61", "0", "0011", (5, 6, 7, 8, 9, 10, 12)),
        "BD": ("880", "0", "00", (6, 7, 8, 9, 10)),
        "BE": ("32", "0", "00", (8, 9)),
        "BG": ("359", "0", "00", (6, 7, 8, 9, 12)),
        "BR": ("55", "0", "00", (8, 9, 10, 11)),
        "CA": ("1", "1", "011", (10,)),
        "CH": ("41", "0", "00", (9, 12)),
        "CL": ("56", None, "00", (9, 10, 11)),
        "CN": ("86", "0", "00", (7, 8, 9, 10, 11, 12)),
        "CZ": ("420", None, "00", (9, 10, 11, 12)),
        "DE": ("49", "0", "00", (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        "DK": ("45", None, "00", (8,)),
        "EE": ("372", None, "00", (7, 8, 10)),
        "EG": ("20", "0", "00", (8, 9, 10)),
        "ES": ("34", None, "00", (9,)),
        "FI": ("358", "0", "00", (5, 6, 7, 8, 9, 10, 11, 12)),
        "FR": ("33", "0", "00", (9,)),
        "GB": ("44", "0", "00", (7, 9, 10)),
        "GR": ("30", None, "00", (10, 11, 12)),
        "HK": ("852", None, "00", (5, 6, 7, 8, 9, 11)),
        "HR": ("385", "0", "00", (7, 8, 9)),
        "HU": ("36", "06", "00", (8, 9)),
        "ID": ("62", "0", "00", (7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)),
        "IE": ("353", "0", "00", (7, 8, 9, 10)),
        "IL": ("972", "0", "00", (7, 8, 9, 10, 11, 12)),
        "IN": ("91", "0", "00", (8, 9, 10, 11, 12, 13)),
        "IS": ("354", None, "00", (7, 9)),
        "IT": ("39", None, "00", (6, 7, 8, 9, 10, 11, 12)),
        "JP": ("81", "0", "010", (8, 9, 10, 11, 12, 13, 14, 15, 16, 17)),
        "KR": ("82", "0", "00", (5, 6, 8, 9, 10, 11, 12, 13, 14)),
        "KW": ("965", None, "00", (7, 8)),
        "LK": ("94", "0", "00", (9,)),
        "LT": ("370", "0", "00", (8,)),
        "LU": ("352", None, "00", (4, 5, 6, 7, 8, 9, 10, 11)),
        "LV": ("371", None, "00", (8,)),
        "MX": ("52", None, "00", (10,)),
        "MY": ("60", "0", "00", (8, 9, 10)),
        "NL": ("31", "0", "00", (5, 6, 7, 8, 9, 10, 11)),
        "NO": ("47", None, "00", (5, 8)),
        "NZ": ("64", "0", "00", (5, 6, 7, 8, 9, 10)),
        "PH": ("63", "0", "00", (6, 8, 9, 10, 11, 12, 13)),
        "PK": ("92", "0", "00", (8, 9, 10, 11, 12)),
        "PL": ("48", None, "00", (6, 7, 8, 9, 10)),
        "PT": ("351", None, "00", (9,)),
        "QA": ("974", None, "00", (7, 8, 9, 11)),
        "RO": ("40", "0", "00", (6, 9)),
        "RU": ("7", "8", "810", (10, 14)),
        "SA": ("966", "0", "00", (9, 10)),
        "SE": ("46", "0", "00", (6, 7, 8, 9, 10, 12)),
        "SG": ("65", None, "00", (8, 10, 11)),
        "SI": ("386", "0", "00", (5, 6, 7, 8)),
        "SK": ("421", "0", "00", (6, 7, 9)),
        "TH": ("66", "0", "00", (8, 9, 10, 13)),
        "TR": ("90", "0", "00", (7, 10, 12, 13)),
        "TW": ("886", "0", "00", (7, 8, 9, 10, 11)),
        "UA": ("380", "0", "00", (9, 10)),
        "US": ("1", "1", "011", (10,)),
        "VN": ("84", "0", "00", (7, 8, 9, 10)),
        "ZA": ("27", "0", "00", (5, 6, 7, 8, 9, 10)),
    }.items()
}


# calling codes whose numbers may be written "+44 (0)20 ..." (a trunk 0 after the code);
# calling codes are prefix-free, so at most one of them starts a number
def country_rules(code: str) -> tuple[str, str | None, str, frozenset[int]]:
    """The :data:`COUNTRIES` entry of ``code`` (any case); ``ValueError`` naming the known
    ones for a country the phone rules do not know (every check of a default country)."""
    country = COUNTRIES.get(code.upper())
    if country is None:
        known = ", ".join(sorted(COUNTRIES))
        raise ValueError(f"unknown default phone country {code!r}; use one of {known}")
    return country


ZERO_TRUNK_CODES = frozenset(cc for cc, trunk, _, _ in COUNTRIES.values() if trunk == "0")

#: the fewest digits a phone that normalises can be written with, in any default country: a
#: national number of its shortest length, or as many as make the 8 digits an E.164 number
#: needs with the calling code (Luxembourg: 5 digits after 352). The plan's cheap
#: "matchable" estimate keeps no phone with fewer (none of them normalises)
MIN_DIGITS = min(
    max(length, 8 - len(cc)) for cc, _, _, lengths in COUNTRIES.values() for length in lengths
)


def _patterns(*, sql: bool) -> tuple[str, str]:
    """(whole number, trailing extension) as regular expressions for ``re`` or RE2."""
    space = char_class(ASCII_SPACE, sql=sql)[1:-1]
    ws = char_class(WHITESPACE, sql=sql)
    # optional "(" / "+" start, then digits and the usual separators only; letters (a hash,
    # a vanity number) make the value unusable
    phone = rf"[{space}(]*(\+)?[0-9{space}\-.()/]*"
    # an extension at the end ("x12", "ext. 4", ";ext=5", ", 123") is cut off first
    ext_word = "(?:[eE]?[xX][tT](?:[eE][nN][sS][iI][oO][nN]|[nN])?|[xX])"
    extension = rf"{ws}*(?:;[eE][xX][tT]=|[,;#]|{ext_word}\.?){ws}*[0-9]{{1,7}}#?{ws}*$"
    return phone, extension


#: dashes that are not "-" (non-breaking hyphen, en dash, minus sign, ...): read as "-"
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2212\ufe63\uff0d"
#: characters a phone is read with as others: whitespace that is not ASCII as a space, the
#: dashes as "-", invisible formatting characters (a byte order mark, a direction mark) as
#: nothing. (:data:`SEPARATORS_FROM` -> :data:`SEPARATORS_TO`, shorter: the rest deleted)
_OTHER_SPACES = "".join(c for c in WHITESPACE if c not in ASCII_SPACE)
SEPARATORS_FROM = _OTHER_SPACES + DASHES + INVISIBLE
SEPARATORS_TO = " " * len(_OTHER_SPACES) + "-" * len(DASHES)
_SEPARATORS = str.maketrans(SEPARATORS_FROM[: len(SEPARATORS_TO)], SEPARATORS_TO, INVISIBLE)


#: a number written by a float column (pandas' float64 with missing values, a DOUBLE or a
#: DECIMAL with a scale): "61412345678.0" is the number 61412345678, not 614123456780
#: (".0" as pandas and DOUBLE write it, ".00" as a DECIMAL of scale 2; whitespace around, as
#: a value is trimmed; "9123.0000" is rather a number written with a dot). A "+" in front
#: ("+61412345678.0": a spreadsheet's "+" & the float's text) keeps its meaning.
def _float_digits(*, sql: bool) -> str:
    ws = char_class(WHITESPACE, sql=sql)
    return rf"{ws}*\+?[0-9]+\.00?{ws}*"


FLOAT_DIGITS = _float_digits(sql=True)
_FLOAT = re.compile(_float_digits(sql=False))

#: the same two expressions, written for RE2 (DuckDB's ``regexp_*`` functions)
PHONE_PATTERN, EXTENSION_PATTERN = _patterns(sql=True)
_phone, _extension = _patterns(sql=False)
_PHONE = re.compile(_phone)
_EXTENSION = re.compile(_extension)
_NON_DIGITS = re.compile(r"[^0-9]")


def normalise_phone(value: str | None, default_country: str) -> str | None:
    """The number in E.164 with ``+``, or ``None`` when it cannot be one.

    A number starting with ``+``, ``00`` or the country's international prefix (``0011``
    AU, ``011`` US/CA, ``010`` JP) is international; a ``(0)`` right after a calling code
    whose trunk prefix is 0 is dropped (``+44 (0)20 ...``). Otherwise the number is
    national in ``default_country``: one leading trunk prefix (``0``; ``1`` in NANP, ``8``
    in RU, ``06`` in HU) is dropped and the calling code prefixed, unless the digits
    already start with the calling code and only make sense that way (``61412345678`` in
    AU, ``14155552671`` in US). A national number must have a length the country uses;
    every result has 8 to 15 digits. Extensions (``x123``, ``ext. 4``) are ignored, and so
    is the ``.0`` a float column adds (``61412345678.0``).

    Raises ``ValueError`` for a ``default_country`` missing from :data:`COUNTRIES`.
    """
    country = country_rules(default_country)
    if not value:
        return None
    if not value.isascii():
        value = value.translate(_SEPARATORS)
    text = value.strip()
    if "." in text and _FLOAT.fullmatch(value):
        text = text.split(".", 1)[0]
    match = _PHONE.fullmatch(text)
    if match is None:
        match = _PHONE.fullmatch(_EXTENSION.sub("", text))
        if match is None:
            return None
        text = match.group(0)
    digits = _NON_DIGITS.sub("", text)
    calling_code, trunk, idd, lengths = country
    if match.group(1) or digits[:2] == "00" or digits.startswith(idd):
        # international: drop the dialling prefix and a "(0)" trunk after the calling code
        if not match.group(1):
            digits = digits[len(idd) :] if digits.startswith(idd) else digits[2:]
        for size in (1, 2, 3):
            if digits[size : size + 1] == "0" and digits[:size] in ZERO_TRUNK_CODES:
                digits = digits[:size] + digits[size + 1 :]
                break
        number = digits
    else:
        if trunk and digits.startswith(trunk):
            rest = digits[len(trunk) :]
            if trunk[0] == "0" or len(rest) in lengths:
                digits = rest
        elif (
            digits.startswith(calling_code)
            and len(digits) not in lengths
            and len(digits) - len(calling_code) in lengths
        ):
            digits = digits[len(calling_code) :]
        if len(digits) not in lengths:
            return None
        number = calling_code + digits
    if not 8 <= len(number) <= 15 or number[0] == "0":
        return None
    return "+" + number
