"""Identifier types as data: each type's normaliser and its platform forms.

An :class:`IdentifierType` turns a raw profile value into its *canonical* normalised form, or
``None`` when the value is unusable (empty, malformed, already hashed, ...). Platforms that
need a different spelling of the same fact (Meta hashes phone digits without ``+``; Google
canonicalises Gmail addresses) get a named *form*: a function of the canonical value.
:mod:`destinations.identity.rules` then says, per platform, which form is sent and how it is
hashed. Adding a type or a form here (and its SQL twin in :mod:`destinations.identity.sql`)
is all a new adapter needs; the engine never names a type.

Every function is a few string operations: this runs per member, for millions of members.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from destinations.identity.phones import normalise_phone
from destinations.identity.text import (
    CONTROL,
    INVISIBLE,
    WHITESPACE,
    char_class,
    lower,
    nfc,
    visible,
)

__all__ = [
    "CANONICAL",
    "TYPES",
    "check_identifier_types",
    "IdentifierType",
    "NormaliseContext",
    "US_STATES",
    "identifier_type",
    "email_pattern",
    "normalise_email",
]

#: the name of the form every type has: the canonical normalised value itself
CANONICAL = "canonical"


@dataclass(frozen=True)
class NormaliseContext:
    """What normalisers may depend on besides the value: the workspace's default phone
    country (for national numbers). An unknown country is refused (``ValueError``) by the
    phone normaliser, the only one that uses it."""

    default_country: str = "US"


Normaliser = Callable[[str | None, NormaliseContext], str | None]
Form = Callable[[str], str | None]


@dataclass(frozen=True)
class IdentifierType:
    """One kind of identifier: ``normalise(value, context)`` gives the canonical form or
    ``None``; ``forms`` maps form names to functions of the canonical value. ``pii`` says
    whether the raw value is personal data (then it is never stored unhashed).
    ``fallback`` names the type whose value is used when a member has none of this one
    (``first_initial`` is taken from ``first_name``)."""

    name: str
    normalise: Normaliser
    forms: Mapping[str, Form] = field(default_factory=dict)
    pii: bool = True
    fallback: str | None = None

    def form(self, name: str) -> Form | None:
        """The form function, ``None`` for the canonical form; ``KeyError`` if unknown."""
        if name == CANONICAL:
            return None
        return self.forms[name]


# --- e-mail --------------------------------------------------------------------------------


def email_pattern(*, sql: bool = False) -> str:
    """One ``@`` between a non-empty local part and a dotted domain, no whitespace or control
    character anywhere, as a regular expression for ``re`` or (``sql=True``) RE2."""
    n = char_class("@" + WHITESPACE + INVISIBLE + CONTROL, negate=True, sql=sql)[:-1]
    return f"{n}]+@{n}.]{n}]*\\.{n}.]+"


_EMAIL = re.compile(email_pattern())
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def normalise_email(value: str | None) -> str | None:
    """Trimmed, lowercased e-mail without invisible formatting characters (a byte order
    mark, a zero-width space), or ``None`` when empty or clearly not an address (anything
    but one ``@`` between a non-empty local part and a dotted domain)."""
    if not value:
        return None
    email = lower(visible(value).strip())
    return email if _EMAIL.fullmatch(email) else None


def _google_email(email: str) -> str | None:
    """Google's form: for gmail.com / googlemail.com, dots and a ``+tag`` leave the local part
    (``cloudy.sanfrancisco+shopping@gmail.com`` -> ``cloudysanfrancisco@gmail.com``)."""
    local, _, domain = email.rpartition("@")
    if domain not in GMAIL_DOMAINS:
        return email
    local = local.split("+", 1)[0].replace(".", "")
    return local + "@" + domain if local else None


# --- names and places ----------------------------------------------------------------------

_SPACES = re.compile(char_class(WHITESPACE) + "+")


def normalise_name(value: str | None) -> str | None:
    """NFC, lowercased, letters and combining marks only (any script), words separated by one
    space: ``" Anne-Marie  O'Brien "`` -> ``"annemarie obrien"``; ``None`` when no letter is
    left. The marks are the vowel signs and viramas of Indic and Thai scripts (``प्रिया``
    without them is ``परय``, a name nobody has) and accents NFC cannot compose."""
    if not value:
        return None
    text = lower(nfc(value))
    if not text.isalpha():
        text = "".join(
            c if c.isalpha() or _is_mark(c) else " " if c.isspace() else "" for c in text
        )
        text = " ".join(text.split())
        if not any(c.isalpha() for c in text):
            return None
    return text or None


def _is_mark(c: str) -> bool:
    return unicodedata.category(c) in ("Mn", "Mc", "Me")


def _no_spaces(name: str) -> str | None:
    return name.replace(" ", "") or None


def _initial(name: str) -> str | None:
    return name.replace(" ", "")[:1] or None


def _first_initial(value: str | None, context: NormaliseContext) -> str | None:
    name = normalise_name(value)
    return None if name is None else _initial(name)


#: US state and territory names (letters only) -> their two-letter codes, for Meta's ST
US_STATES: Mapping[str, str] = {
    name.replace(" ", ""): code
    for code, name in (
        ("al", "alabama"), ("ak", "alaska"), ("az", "arizona"), ("ar", "arkansas"),
        ("ca", "california"), ("co", "colorado"), ("ct", "connecticut"), ("de", "delaware"),
        ("dc", "district of columbia"), ("fl", "florida"), ("ga", "georgia"), ("hi", "hawaii"),
        ("id", "idaho"), ("il", "illinois"), ("in", "indiana"), ("ia", "iowa"),
        ("ks", "kansas"), ("ky", "kentucky"), ("la", "louisiana"), ("me", "maine"),
        ("md", "maryland"), ("ma", "massachusetts"), ("mi", "michigan"), ("mn", "minnesota"),
        ("ms", "mississippi"), ("mo", "missouri"), ("mt", "montana"), ("ne", "nebraska"),
        ("nv", "nevada"), ("nh", "new hampshire"), ("nj", "new jersey"),
        ("nm", "new mexico"), ("ny", "new york"), ("nc", "north carolina"),
        ("nd", "north dakota"), ("oh", "ohio"), ("ok", "oklahoma"), ("or", "oregon"),
        ("pa", "pennsylvania"), ("ri", "rhode island"), ("sc", "south carolina"),
        ("sd", "south dakota"), ("tn", "tennessee"), ("tx", "texas"), ("ut", "utah"),
        ("vt", "vermont"), ("va", "virginia"), ("wa", "washington"),
        ("wv", "west virginia"), ("wi", "wisconsin"), ("wy", "wyoming"),
        ("pr", "puerto rico"), ("gu", "guam"), ("vi", "virgin islands"),
    )
}  # fmt: skip


def _meta_state(name: str) -> str | None:
    letters = name.replace(" ", "")
    return US_STATES.get(letters, letters) or None


_POSTAL = re.compile(r"[0-9A-Za-z]+(?:[ \-][0-9A-Za-z]+)*")


def normalise_postal_code(value: str | None) -> str | None:
    """Trimmed, inner whitespace as one space, uppercased; ASCII letters, digits, single
    spaces or hyphens only, at most 16 characters (``" sw1a  1aa"`` -> ``"SW1A 1AA"``)."""
    if not value:
        return None
    text = " ".join(value.split())
    return text.upper() if len(text) <= 16 and _POSTAL.fullmatch(text) else None


def _meta_zip(code: str) -> str | None:
    """Meta's ZIP: lowercase, no spaces, nothing from the first ``-`` (US ZIP+4)."""
    return code.split("-", 1)[0].replace(" ", "").lower() or None


_COUNTRY = re.compile(r"[A-Za-z]{2}")


def normalise_country(value: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code, lowercased (``" AU "`` -> ``"au"``); names are refused."""
    if not value:
        return None
    text = value.strip()
    return text.lower() if _COUNTRY.fullmatch(text) else None


# --- the rest ------------------------------------------------------------------------------

_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


def normalise_gender(value: str | None) -> str | None:
    """``m`` or ``f`` from m / male / man / f / female / woman in any case; else ``None``."""
    if not value:
        return None
    return _GENDERS.get(lower(value.strip()))


DATE_PATTERN = r"([0-9]{4})[\-/.]([0-9]{1,2})[\-/.]([0-9]{1,2})(?:[T ][0-9:.+Z\-]*)?"
_DATE = re.compile(DATE_PATTERN)


def normalise_date(value: str | None) -> str | None:
    """``YYYY-MM-DD`` of a real calendar date from 1900 to 2099, written year first with
    ``-``, ``/`` or ``.`` (a time part is ignored); day-first or month-first dates are
    ambiguous and refused."""
    if not value:
        return None
    match = _DATE.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    if not 1900 <= year <= 2099:
        return None
    try:
        return datetime.date(year, month, day).isoformat()
    except ValueError:
        return None


_MADID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NO_MADID = "00000000-0000-0000-0000-000000000000"


def normalise_madid(value: str | None) -> str | None:
    """A mobile advertiser id (IDFA / AAID): lowercase UUID with hyphens; the all-zero id of
    a device that limits ad tracking is refused."""
    if not value:
        return None
    text = lower(value.strip())
    return text if text != _NO_MADID and _MADID.fullmatch(text) else None


def normalise_external_id(value: str | None) -> str | None:
    """The advertiser's own id for the person, trimmed; case is kept."""
    if not value:
        return None
    return value.strip() or None


def _phone(value: str | None, context: NormaliseContext) -> str | None:
    return normalise_phone(value, context.default_country)


def _plain(normalise: Callable[[str | None], str | None]) -> Normaliser:
    def normaliser(value: str | None, context: NormaliseContext) -> str | None:
        return normalise(value)

    normaliser.__doc__ = normalise.__doc__
    return normaliser


def _digits(e164: str) -> str:
    return e164[1:]


_NAME_FORMS: Mapping[str, Form] = {"letters": _no_spaces}

#: every identifier type, by name
TYPES: Mapping[str, IdentifierType] = {
    t.name: t
    for t in (
        IdentifierType("email", _plain(normalise_email), {"google": _google_email}),
        IdentifierType("phone", _phone, {"digits": _digits}),
        IdentifierType("madid", _plain(normalise_madid), pii=False),
        IdentifierType("external_id", _plain(normalise_external_id), pii=False),
        IdentifierType("first_name", _plain(normalise_name), _NAME_FORMS),
        IdentifierType("last_name", _plain(normalise_name), _NAME_FORMS),
        IdentifierType("first_initial", _first_initial, fallback="first_name"),
        IdentifierType("gender", _plain(normalise_gender)),
        IdentifierType(
            "date_of_birth",
            _plain(normalise_date),
            {"year": lambda d: d[:4], "month": lambda d: d[5:7], "day": lambda d: d[8:10]},
        ),
        IdentifierType("city", _plain(normalise_name), _NAME_FORMS),
        IdentifierType("state", _plain(normalise_name), {"meta": _meta_state}),
        IdentifierType(
            "postal_code", _plain(normalise_postal_code), {"meta": _meta_zip}, pii=False
        ),
        IdentifierType("country", _plain(normalise_country), {"upper": str.upper}, pii=False),
    )
}


def identifier_type(name: str) -> IdentifierType:
    """The registered type ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return TYPES[name]
    except KeyError:
        raise ValueError(f"unknown identifier type {name!r}; known: {', '.join(TYPES)}") from None


def check_identifier_types(value: list[str]) -> list[str]:
    """A destination config's list of identifier types: each one known, each listed once
    (``ValueError`` otherwise, for a pydantic validator)."""
    unknown = [v for v in value if v not in TYPES]
    if unknown:
        raise ValueError(
            f"unknown identifier type(s) {', '.join(map(repr, unknown))}; "
            f"use any of {', '.join(TYPES)}"
        )
    if len(set(value)) != len(value):
        raise ValueError("each identifier type may be listed once")
    return value
