"""The validated ``config:`` block and optional credentials of a ``type: files`` integration."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from destinations.base import DestinationConfig
from destinations.identity.types import check_identifier_types
from destinations.redaction import Credentials

__all__ = ["EXTRAS", "FilesConfig", "FilesCredentials", "url_scheme"]

#: URL scheme -> (the fsspec implementation's module, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "memory": ("fsspec", "s3"),
}


class FilesConfig(DestinationConfig):
    """Where export files go and what they hold.

    - ``location``: a local folder (relative to the workspace, or absolute) or an fsspec URL
      (``s3://bucket/prefix``, ``gs://bucket/prefix``; install the matching extra). Every
      activation writes below it, under its ``export.path``.
    - ``format``: ``csv`` (with a header) or ``parquet``.
    - ``identifiers``: identifier types written, one column each.
    - ``pii``: ``hashed`` (default: SHA-256 of each normalised value of personal data) or
      ``raw`` (the normalised values themselves; say so explicitly).
    - ``escape_formulas``: CSV only; a text cell starting with ``=``, ``+``, ``-``, ``@``, a
      tab or a carriage return gets a leading ``'``, so a spreadsheet opening the file shows
      it instead of running it as a formula (CSV injection). Off by default: it changes
      those values for every other reader (a name like ``-Ann``); text that is a plain
      number (``-5``, ``+61412345678``) is never changed.
    - ``storage_options``: extra fsspec options for URL locations (never secrets: those go
      under ``credentials``).
    - ``exit_at``: a failure knob (like the sandbox's) for trying crash recovery.
    """

    location: str = Field(description="a local folder or an fsspec URL (s3://bucket/prefix)")
    format: Literal["csv", "parquet"] = Field("csv", description="csv (with header) or parquet")
    identifiers: list[str] = Field(
        default_factory=lambda: ["email", "phone"],
        min_length=1,
        description="identifier types written, one column each",
    )
    pii: Literal["hashed", "raw"] = Field(
        "hashed", description="hashed (SHA-256) or raw (normalised values) personal data"
    )
    escape_formulas: bool = Field(
        False,
        description="csv: prefix text cells starting with = + - @ tab or CR with a ' so "
        "spreadsheets show them instead of running them as formulas (changes such values, e.g. "
        "a name like -Ann, for every other reader; plain numbers never)",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for URL locations (no secrets)"
    )
    exit_at: Literal["copied", "published"] | None = Field(
        None,
        description="failure knob for trying recovery: the process dies after the file was "
        "copied to its temporary name, or after it was published but before its manifest",
    )

    @field_validator("location")
    @classmethod
    def _usable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder or an fsspec URL")
        scheme = url_scheme(value)
        if scheme is None:
            return value
        if scheme not in EXTRAS:
            known = ", ".join(f"{s}://" for s in sorted(EXTRAS) if s != "memory")
            raise ValueError(f"unsupported URL scheme {scheme!r}; use a local folder or {known}")
        module, extra = EXTRAS[scheme]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"{scheme}:// needs the {module!r} package: "
                f"pip install 'activation-reconciler[{extra}]'"
            )
        if not urlsplit(value).netloc and scheme != "memory":
            raise ValueError(f"{value!r} names no bucket: use {scheme}://bucket/prefix")
        return value

    @field_validator("identifiers")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return check_identifier_types(value)


class FilesCredentials(Credentials):
    """Object-store keys (optional: without them the store's default chain is used, e.g.
    ``AWS_*`` variables or an instance role)."""

    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    token: SecretStr | None = None


def url_scheme(location: str) -> str | None:
    """The URL scheme of ``location``, or None for a local path (``C:\\`` too)."""
    head, sep, _ = location.partition("://")
    return head.lower() if sep and len(head) > 1 and head.isalnum() else None
