"""What every model of the workspace files shares: strict models (unknown fields are errors),
field-level errors, names, e-mail shape, ``${env:VAR}`` references and loopback hosts."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
)

from destinations.identity import TYPES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
#: the identifier types a profiles table may declare (``destinations.identity`` defines them)
IDENTIFIER_TYPES = tuple(TYPES)
#: identifier types other than e-mail and phone that match a person on their own (a name,
#: a date of birth or a postal code matches only together with others)
STANDALONE_IDENTIFIERS = ("madid", "external_id")
ENV_REF_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: a plain mailbox (no display name, no whitespace, a dotted domain); enough to catch typos
EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,}"
)

EMAIL_PATTERN = f"^(?:{EMAIL_RE.pattern})$"


class FieldError(ValueError):
    """A model rule broken by one field: ``loc`` (below the validated value) lets the error
    name that field's line instead of the start of the file."""

    def __init__(self, message: str, *loc: str | int):
        super().__init__(message)
        self.loc = loc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_reference(value: Any, what: str) -> Any:
    """``value`` unchanged when it is an ``${env:VAR}`` reference; never echoes a literal."""
    if value is not None and not (isinstance(value, str) and ENV_REF_RE.fullmatch(value)):
        raise FieldError(f"{what} must be an ${{env:VAR}} reference, never a literal secret")
    return value


def listed_once(value: list[str], what: str) -> list[str]:
    """``value`` when no item is in it twice (a copy-paste slip, never meant); else
    ValueError naming the repeated ones."""
    dupes = sorted({s for s in value if value.count(s) > 1})
    if dupes:
        raise ValueError(f"{what} listed twice: {dupes}")
    return value
