"""Platform rules as data: for each platform, which identifier types it takes, in which
normalised form, how each is hashed, and the record string kept for it.

An :class:`Encoding` is one (platform field, identifier type) pair. Its *value* is what the
adapter sends; its *record* (``<prefix>:<hex or value>``) is what ``BatchResult.records``
returns, what the state keeps and what a removal sends back. A prefix always means the same
(type, form, hash) in every rule set, so equal records mean equal identifiers.

=============  =====================================================  ========================
``Hash``       value sent                                             record
=============  =====================================================  ========================
``SHA256``     lowercase hex SHA-256 of the form                      ``prefix:<that hex>``
``MD5``        lowercase hex MD5 of the form                          ``prefix:<that hex>``
``NONE``       the form itself (not personal data: MADID, country)    ``prefix:<the form>``
``RAW``        the form itself (personal data, e.g. a raw e-mail)     ``prefix:<SHA-256 hex>``
=============  =====================================================  ========================

Raw personal data is therefore never part of a record: only hashes, and the plain values of
types marked ``pii=False`` (mobile advertiser id, external id, country, postal code), which
the platforms themselves take unhashed.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from destinations.identity.types import CANONICAL, TYPES, Form, NormaliseContext, Normaliser

__all__ = [
    "ANCHORS",
    "RULES_VERSION",
    "GOOGLE",
    "HASHED",
    "MAILCHIMP",
    "META",
    "RAW",
    "RULE_SETS",
    "SANDBOX",
    "Encoded",
    "Encoding",
    "Hash",
    "RuleSet",
    "encode",
    "hashed_identifiers",
    "md5_hex",
    "meta_phone",
    "records",
    "sha256_hex",
]


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()


def md5_hex(value: str) -> str:
    """Lowercase hex MD5 of the UTF-8 bytes of ``value`` (Mailchimp's subscriber hash)."""
    return hashlib.md5(value.encode()).hexdigest()


def meta_phone(e164: str) -> str:
    """Meta's phone form: the E.164 digits without ``+`` (``+61412345678`` -> ``61412345678``)."""
    return e164[1:] if e164.startswith("+") else e164


#: the version of the normalisation rules: bumped when a rule change makes a value normalise
#: differently (2: invisible characters leave e-mails; a float's ".0" and other spaces and
#: dashes leave phones; 3: "+61412345678.0" is +61412345678, as "61412345678.0" was; 4: an
#: e-mail holding a control character, "a@x.com\x00", is no e-mail; 5: a member with no
#: usable e-mail, phone, MADID or external id has no records, whatever else it has; 6: names
#: keep their combining marks, the vowel signs and viramas of Indic and Thai names). The
#: state records the version each activation was sent with; a plan under a newer one
#: re-checks its recorded members and updates those whose records changed.
RULES_VERSION = 6


class Hash(enum.Enum):
    """How an encoding's value is sent (see the table in this module's docstring)."""

    SHA256 = "sha256"
    MD5 = "md5"
    NONE = "none"
    RAW = "raw"


@dataclass(frozen=True)
class Encoding:
    """One platform field: identifier type ``identifier`` in form ``form``, hashed as
    ``hash``, recorded as ``<prefix>:...``; ``field`` is the platform's name for it."""

    identifier: str
    field: str
    prefix: str
    hash: Hash = Hash.SHA256
    form: str = CANONICAL

    def __post_init__(self) -> None:
        kind = TYPES.get(self.identifier)
        if kind is None:
            raise ValueError(f"unknown identifier type {self.identifier!r}")
        kind.form(self.form)  # KeyError for an unknown form
        if self.hash is Hash.NONE and kind.pii:
            raise ValueError(f"{self.identifier} is personal data and must not be sent unhashed")

    def value(self, normalised: str) -> str:
        """What is sent for the (already formed) normalised value."""
        if self.hash is Hash.SHA256:
            return sha256_hex(normalised)
        if self.hash is Hash.MD5:
            return md5_hex(normalised)
        return normalised

    def record(self, normalised: str) -> str:
        """What is kept for it: never raw personal data."""
        return self.encode(normalised)[1]

    def encode(self, normalised: str) -> tuple[str, str]:
        """(value, record) at the cost of one hash."""
        value = self.value(normalised)
        if self.hash is Hash.RAW:
            return value, f"{self.prefix}:{sha256_hex(normalised)}"
        return value, f"{self.prefix}:{value}"


#: identifier types that match a person by themselves. A member is sent (and has records)
#: only with a usable one of these: names, birth date, gender and address fields travel with
#: one to improve the match, never alone (``bob@localhost`` with a name and a postcode was
#: sent to Meta as the name and postcode alone)
ANCHORS = frozenset({"email", "phone", "madid", "external_id"})


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: cheap cache keys
class RuleSet:
    """A platform's encodings, in the order its payload lists them. ``anchors``: the
    identifier types a member needs one of to be sent at all (None: any record will do)."""

    name: str
    encodings: tuple[Encoding, ...]
    anchors: frozenset[str] | None = ANCHORS

    @property
    def anchor_prefixes(self) -> tuple[str, ...] | None:
        """The record prefixes (``"email_sha256:"``) of the identifiers that match a person by
        themselves; None when any record will do (no anchor rule)."""
        if self.anchors is None:
            return None
        return tuple(f"{e.prefix}:" for e in self.encodings if e.identifier in self.anchors)

    @property
    def identifiers(self) -> tuple[str, ...]:
        """The identifier types this platform accepts, in order."""
        return tuple(dict.fromkeys(e.identifier for e in self.encodings))

    def for_identifier(self, name: str) -> tuple[Encoding, ...]:
        """The encodings of one identifier type; ``ValueError`` when it has none here."""
        found = tuple(e for e in self.encodings if e.identifier == name)
        if not found:
            raise ValueError(
                f"the {self.name} rules cannot encode identifier type {name!r}; "
                f"supported: {', '.join(self.identifiers)}"
            )
        return found


def _meta(identifier: str, key: str, form: str = CANONICAL, hashed: bool = True) -> Encoding:
    if not hashed:
        return Encoding(identifier, key, key.lower(), Hash.NONE, form)
    if identifier == "email":
        return Encoding(identifier, key, "email_sha256", form=form)
    return Encoding(identifier, key, f"meta_{key.lower()}_sha256", form=form)


#: Meta Custom Audiences, multi-key schema (EXTERN_ID and MADID unhashed)
META = RuleSet(
    "meta",
    (
        _meta("external_id", "EXTERN_ID", hashed=False),
        _meta("email", "EMAIL"),
        _meta("phone", "PHONE", "digits"),
        _meta("gender", "GEN"),
        _meta("date_of_birth", "DOBY", "year"),
        _meta("date_of_birth", "DOBM", "month"),
        _meta("date_of_birth", "DOBD", "day"),
        _meta("last_name", "LN", "letters"),
        _meta("first_name", "FN", "letters"),
        _meta("first_initial", "FI"),
        _meta("city", "CT", "letters"),
        _meta("state", "ST", "meta"),
        _meta("postal_code", "ZIP", "meta"),
        _meta("madid", "MADID", hashed=False),
        _meta("country", "COUNTRY"),
    ),
)

#: Google Customer Match / Data Manager (addressInfo: names hashed, region and postal not)
GOOGLE = RuleSet(
    "google",
    (
        Encoding("email", "emailAddress", "google_email_sha256", form="google"),
        Encoding("phone", "phoneNumber", "phone_sha256"),
        Encoding("first_name", "givenName", "first_name_sha256"),
        Encoding("last_name", "familyName", "last_name_sha256"),
        Encoding("country", "regionCode", "region_code", Hash.NONE, "upper"),
        Encoding("postal_code", "postalCode", "postal_code", Hash.NONE),
    ),
    # Google's address info (names, country and postal code together) matches by itself:
    # not modelled as an anchor group (no Google adapter yet), so no anchor rule here
    anchors=None,
)

#: the local sandbox: today's records, which existing state depends on
SANDBOX = RuleSet(
    "sandbox",
    (
        Encoding("email", "email", "email_sha256"),
        Encoding("phone", "phone", "phone_sha256"),
    ),
)

#: Mailchimp: members are addressed by the MD5 of the lowercased e-mail; the raw address is sent
MAILCHIMP = RuleSet(
    "mailchimp",
    (
        Encoding("email", "subscriber_hash", "email_md5", Hash.MD5),
        Encoding("email", "email_address", "email_sha256", Hash.RAW),
    ),
)

#: destinations that take personal data as is (`pii: raw`): every type, canonical, unhashed
RAW = RuleSet(
    "raw",
    tuple(
        Encoding(
            name, name, f"{name}_sha256" if kind.pii else name, Hash.RAW if kind.pii else Hash.NONE
        )
        for name, kind in TYPES.items()
    ),
)

#: generic receivers of hashes (webhooks, `pii: hashed`): every type, canonical, personal data
#: as SHA-256 under the field ``<type>_sha256`` (the record prefix: value and record agree)
HASHED = RuleSet(
    "hashed",
    tuple(
        Encoding(name, f"{name}_sha256", f"{name}_sha256")
        if kind.pii
        else Encoding(name, name, name, Hash.NONE)
        for name, kind in TYPES.items()
    ),
)

RULE_SETS: Mapping[str, RuleSet] = {
    r.name: r for r in (META, GOOGLE, SANDBOX, MAILCHIMP, RAW, HASHED)
}


class Encoded(NamedTuple):
    """One identifier of one member, ready to send (``value``) and to record (``record``)."""

    encoding: Encoding
    value: str
    record: str


_Digest = Callable[[str], str] | None
#: one encoding, precomputed for the per-member loop: form, encoding, digest of the value
#: sent, digest of the record (RAW only), "prefix:"
_Pair = tuple[Form | None, Encoding, _Digest, _Digest, str]
_Step = tuple[str, str | None, Normaliser, tuple[_Pair, ...]]
_DIGESTS: Mapping[Hash, _Digest] = {
    Hash.SHA256: sha256_hex,
    Hash.MD5: md5_hex,
    Hash.NONE: None,
    Hash.RAW: None,
}


@functools.lru_cache(maxsize=256)
def _steps(rules: RuleSet, accepted: tuple[str, ...]) -> tuple[_Step, ...]:
    """Per accepted type: where to read it, its normaliser and its encodings."""
    steps = []
    for name in accepted:
        kind = TYPES[name]
        pairs = tuple(
            (
                kind.form(e.form),
                e,
                _DIGESTS[e.hash],
                sha256_hex if e.hash is Hash.RAW else None,
                e.prefix + ":",
            )
            for e in rules.for_identifier(name)
        )
        steps.append((name, kind.fallback, kind.normalise, pairs))
    return tuple(steps)


def _run(
    identifiers: Mapping[str, str | None],
    accepted: Sequence[str],
    rules: RuleSet,
    context: NormaliseContext,
    with_values: bool,
) -> list[Encoded] | list[str]:
    out: list = []
    anchored = False  # a record of an identifier that matches by itself (ANCHORS)
    for name, fallback, normalise, pairs in _steps(rules, tuple(accepted)):
        raw = identifiers.get(name)
        if raw is None and fallback is not None:
            raw = identifiers.get(fallback)
        canonical = normalise(raw, context)
        if canonical is None:
            continue
        for form, encoding, digest, record_digest, prefix in pairs:
            formed = canonical if form is None else form(canonical)
            if formed is None:
                continue
            value = formed if digest is None else digest(formed)
            record = prefix + (value if record_digest is None else record_digest(formed))
            out.append(Encoded(encoding, value, record) if with_values else record)
            anchored = anchored or rules.anchors is None or name in rules.anchors
    return out if anchored else []


def encode(
    identifiers: Mapping[str, str | None],
    accepted: Sequence[str],
    rules: RuleSet,
    context: NormaliseContext,
) -> tuple[Encoded, ...]:
    """Every encoding of every ``accepted`` type (in that order, then in the rule set's
    order) that the member has and that normalises; unusable values are skipped. Raises
    ``ValueError`` for a type the rule set cannot encode."""
    return tuple(_run(identifiers, accepted, rules, context, True))  # type: ignore[arg-type]


def records(
    identifiers: Mapping[str, str | None],
    accepted: Sequence[str],
    rules: RuleSet,
    context: NormaliseContext,
) -> tuple[str, ...]:
    """Just the record strings of :func:`encode` (the same loop, without the tuples)."""
    return tuple(_run(identifiers, accepted, rules, context, False))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _context(default_country: str) -> NormaliseContext:
    return NormaliseContext(default_country)


def hashed_identifiers(
    identifiers: Mapping[str, str | None], accepted: Sequence[str], default_country: str
) -> tuple[str, ...]:
    """The sandbox's record strings of one member: each ``accepted`` identifier type (in that
    order) that the member has and that normalises, as ``<type>_sha256:<hex>``; unusable ones
    are skipped, so the result may be empty. Raises ``ValueError`` for an identifier type the
    sandbox rules cannot hash, or an unknown default country."""
    return records(identifiers, accepted, SANDBOX, _context(default_country))
