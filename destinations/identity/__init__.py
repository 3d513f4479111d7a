"""Identifiers, normalised and hashed exactly as each platform requires.

- :mod:`~destinations.identity.types`: the identifier types (email, phone, madid, names,
  date of birth, address parts, ...) and their normalisers, as data;
- :mod:`~destinations.identity.rules`: per platform (``META``, ``GOOGLE``, ``SANDBOX``,
  ``MAILCHIMP``, ``RAW``, ``HASHED``), which form of each type is sent, how it is hashed, and the record
  string kept for it;
- :mod:`~destinations.identity.sql`: the same normalisation and hashing as DuckDB SQL
  expressions, for computing records of millions of members inside the database;
- :mod:`~destinations.identity.phones`: phone numbers to E.164 for 60 countries.

See ``docs/identifiers.md``.
"""

from destinations.identity.phones import COUNTRIES, normalise_phone
from destinations.identity.rules import (
    GOOGLE,
    HASHED,
    MAILCHIMP,
    META,
    RAW,
    RULE_SETS,
    SANDBOX,
    Encoded,
    Encoding,
    Hash,
    RuleSet,
    encode,
    hashed_identifiers,
    md5_hex,
    meta_phone,
    records,
    sha256_hex,
)
from destinations.identity.types import (
    TYPES,
    IdentifierType,
    NormaliseContext,
    identifier_type,
    normalise_email,
)

__all__ = [
    "COUNTRIES",
    "GOOGLE",
    "HASHED",
    "MAILCHIMP",
    "META",
    "RAW",
    "RULE_SETS",
    "SANDBOX",
    "TYPES",
    "Encoded",
    "Encoding",
    "Hash",
    "IdentifierType",
    "NormaliseContext",
    "RuleSet",
    "encode",
    "hashed_identifiers",
    "identifier_type",
    "md5_hex",
    "meta_phone",
    "normalise_email",
    "normalise_phone",
    "records",
    "sha256_hex",
]
