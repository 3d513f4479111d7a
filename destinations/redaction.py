"""Keep secrets (and raw e-mail addresses) out of every log line, error message and repr.

A :class:`Redactor` replaces, in any text:

- the secret values it was given (tokens, API keys, passwords), also URL-encoded;
- whatever follows ``Authorization:``, ``Bearer``/``Basic``/``Klaviyo-API-Key`` and the like;
- the values of secret-looking query parameters (``access_token=``, ``api_key=``,
  ``appsecret_proof=``, ...);
- the password of ``scheme://user:password@host`` URLs;
- e-mail addresses (raw PII a vendor may echo in an error body).

:data:`PROCESS_REDACTOR` is the one every message of the HTTP layer and the retry policy
passes through; :func:`protect` adds secrets to it and makes sure the log records of
``httpx``, ``httpcore`` and ``destinations`` are filtered through it (httpx logs full URLs,
query strings included, at INFO). :class:`Credentials` registers its secrets on creation.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from reconciler.errors import ConfigError

__all__ = [
    "MASK",
    "PROCESS_REDACTOR",
    "Credentials",
    "RedactingFilter",
    "Redactor",
    "member_reason",
    "protect",
]

MASK = "***"
#: secrets shorter than this are not searched for (they would mask ordinary text)
MIN_SECRET_LENGTH = 4

_SECRET_HEADERS = r"authorization|proxy-authorization|x-api-key|api-key|access-token|cookie"
_SECRET_PARAMS = (
    r"access_token|refresh_token|id_token|token|api_key|apikey|key|appsecret_proof|"
    r"client_secret|secret|password|passwd|signature"
)
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # header lines and header dicts: Authorization: <anything up to the line end or quote>
    (
        re.compile(rf"(?i)\b({_SECRET_HEADERS})(['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}}]+"),
        r"\1\2" + MASK,
    ),
    # scheme + credentials wherever they appear
    (
        re.compile(r"(?i)\b(bearer|basic|klaviyo-api-key)(\s+)[A-Za-z0-9._~+/=-]{8,}"),
        r"\1\2" + MASK,
    ),
    # query strings and form bodies: access_token=...
    (re.compile(rf"(?i)(?<![A-Za-z0-9_])({_SECRET_PARAMS})=[^&\s'\"]+"), r"\1=" + MASK),
    # JSON bodies: "access_token": "..."
    (re.compile(rf'(?i)("(?:{_SECRET_PARAMS})"\s*:\s*")[^"]*"'), r"\1" + MASK + '"'),
    # user:password@ in URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
    # raw e-mail addresses
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "<email>"),
]


class Redactor:
    """Callable: ``redactor(text) -> text`` with secrets and e-mail addresses masked.
    Thread-safe; secrets can be added after creation."""

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()):
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | SecretStr | None) -> None:
        values: list[str] = []
        for s in secrets:
            raw = s.get_secret_value() if isinstance(s, SecretStr) else s
            if raw and len(raw) >= MIN_SECRET_LENGTH:
                values += {raw, quote(raw, safe=""), quote_plus(raw)}
        with self._lock:
            known = set(self._secrets)
            # longest first, so a secret containing another is masked whole
            merged = self._secrets + [v for v in values if v not in known]
            self._secrets = sorted(set(merged), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def filter(self) -> RedactingFilter:
        return RedactingFilter(self)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret forms)"


#: a phone number as a person writes it: digits, maybe spaced, dashed or bracketed, standing
#: alone (not inside a hash or an id); masked when it holds 8 or more digits and is no date
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{6,}\d(?![\w])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _phone(m: re.Match[str]) -> str:
    text = m.group()
    digits = sum(c.isdigit() for c in text)
    return "<phone>" if digits >= 8 and not _DATE.match(text) else text


#: the longest reason kept for one member
MAX_REASON = 300


def member_reason(text: str) -> str:
    """A destination's reason for refusing one member, fit to print, record and notify: the
    process redactor's masks, and phone-number-like digit runs as ``<phone>`` (a receiver may
    echo the member's identifiers: the state and the messages hold none), cut to
    :data:`MAX_REASON` characters."""
    text = _PHONE.sub(_phone, PROCESS_REDACTOR(str(text)))
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message (and traceback text) through a
    :class:`Redactor`. Attach it to loggers or handlers; it never drops a record."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


PROCESS_REDACTOR = Redactor()
_FILTERED_LOGGERS = ("httpx", "httpcore", "destinations")
_install_lock = threading.Lock()
_installed = False


def protect(*secrets: str | SecretStr | None) -> Redactor:
    """Add secrets to :data:`PROCESS_REDACTOR` and filter the HTTP loggers through it."""
    global _installed
    PROCESS_REDACTOR.add(*secrets)
    with _install_lock:
        if not _installed:
            flt = RedactingFilter(PROCESS_REDACTOR)
            for name in _FILTERED_LOGGERS:
                logging.getLogger(name).addFilter(flt)
            _installed = True
    return PROCESS_REDACTOR


class Credentials(BaseModel):
    """Base of an adapter's credentials: declare each secret as a ``SecretStr`` field.

    ``str``/``repr``/JSON show ``**********`` for them, and every secret is registered with
    :func:`protect` on creation. Build from the resolved ``credentials`` mapping with
    :meth:`from_mapping`, which reports missing or unknown keys without echoing values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_post_init(self, context: object, /) -> None:
        protect(*self.secret_values())

    def secret_values(self) -> list[str]:
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, integration: str = "") -> Credentials:
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            # pydantic's own message quotes the input: rebuild it from locations only
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'credentials'}: {_short(e)}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            where = f"integration {integration!r}: " if integration else ""
            raise ConfigError(f"{where}credentials are not usable: {problems}") from None


def _short(error: Mapping) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "missing (add it under credentials: as an ${env:VAR} reference)"
    if kind == "extra_forbidden":
        return "not a credential this destination takes"
    return str(error.get("msg", "invalid"))
