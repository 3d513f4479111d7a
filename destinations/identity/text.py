"""The few text operations every normaliser is built from, defined so that Python and DuckDB
SQL (:mod:`destinations.identity.sql`) compute exactly the same strings.

- whitespace is the fixed set :data:`WHITESPACE` (what Python's ``str.isspace`` accepts);
  SQL trims it with ``trim(x, <those characters>)``;
- lowercasing is per character and one-to-one (the simple Unicode mapping, which is what
  DuckDB's ``lower`` does): ``"İ"`` becomes ``"i"`` and a final ``"Σ"`` becomes ``"σ"``,
  where Python's ``str.lower`` would give ``"i̇"`` and ``"ς"``. ASCII takes the fast path;
- regular expressions use explicit character classes only (no ``\\s``, ``\\d``, ``\\w`` or
  case-insensitive flags, whose meaning differs between Python's ``re`` and RE2);
  :func:`char_class` writes one class for both dialects.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "ASCII_SPACE",
    "CONTROL",
    "INVISIBLE",
    "WHITESPACE",
    "char_class",
    "lower",
    "nfc",
    "sql_string",
    "visible",
]

#: every character for which ``str.isspace()`` is true; ``str.strip()`` removes exactly these
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: the ASCII whitespace of ``re.ASCII``'s ``\s`` (RE2's ``\s`` lacks the vertical tab)
ASCII_SPACE = " \t\n\r\x0b\x0c"
#: invisible formatting characters that exports and copy-paste leave inside values (a byte
#: order mark at the start of a file, zero-width spaces and joiners, soft hyphens, direction
#: marks): never part of an address, they are removed before an e-mail is checked and hashed
INVISIBLE = (
    "\xad\u061c\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d"
    "\u206e\u206f\ufeff"
)
_NO_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))
#: the control characters that are not whitespace (NUL, BEL, ESC, DEL, C1 controls): left in a
#: value by a broken export, never part of an address: a value holding one is not an e-mail
CONTROL = "".join(
    chr(c) for c in range(0xA0) if unicodedata.category(chr(c)) == "Cc" and chr(c) not in WHITESPACE
)


def visible(text: str) -> str:
    """``text`` without the :data:`INVISIBLE` characters; ASCII is returned as is."""
    return text if text.isascii() else text.translate(_NO_INVISIBLE)


def lower(text: str) -> str:
    """Lowercase one character at a time with the simple (one-to-one) Unicode mapping."""
    if text.isascii():
        return text.lower()
    return "".join(c.lower()[0] for c in text)


def nfc(text: str) -> str:
    """Unicode NFC (composed) form; ASCII is returned as is."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def char_class(chars: str, *, negate: bool = False, sql: bool = False) -> str:
    """A regular-expression character class of exactly ``chars``, written for Python's ``re``
    (``sql=False``) or for RE2 inside DuckDB (``sql=True``)."""
    parts = []
    for c in chars:
        code = ord(c)
        if c.isalnum() and c.isascii():
            parts.append(c)
        elif sql:
            parts.append(f"\\x{{{code:x}}}")
        else:
            parts.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def sql_string(text: str) -> str:
    """A DuckDB string literal for ``text``. Control characters are written with ``chr()``
    (the SQL stays printable); every other character as it is: a literal with ``chr()`` pieces
    is folded into a constant each time a query using it is bound, ~0.2 ms a piece, so the
    phone's separators written that way made binding a phone expression cost ~30 ms."""
    pieces: list[str] = []
    run = ""
    for c in text:
        if unicodedata.category(c) != "Cc":
            run += "''" if c == "'" else c
        else:
            if run:
                pieces.append(f"'{run}'")
                run = ""
            pieces.append(f"chr({ord(c)})")
    if run or not pieces:
        pieces.append(f"'{run}'")
    return pieces[0] if len(pieces) == 1 else "(" + " || ".join(pieces) + ")"
