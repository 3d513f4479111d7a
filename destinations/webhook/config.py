"""The validated ``config:`` block and credentials of a ``type: webhook`` integration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from destinations.http import HttpOptions, check_url
from destinations.identity import TYPES
from destinations.identity.types import check_identifier_types
from destinations.redaction import Credentials
from reconciler.errors import ConfigError
from reconciler.webhook_secrets import SECRET_PREFIX, secret_problem
from reconciler.workspace.schema_rules import URL_PATTERN

__all__ = ["SECRET_PREFIX", "WebhookConfig", "WebhookCredentials"]


class WebhookConfig(HttpOptions):
    """Where events go and what they carry.

    - ``url``: the receiver (https; plain http only to loopback). The integration's
      ``endpoint``, when set, replaces it (a proxy or a local test server).
    - ``identifiers``: identifier types sent, in preference order (any type of
      ``docs/identifiers.md``).
    - ``pii``: ``hashed`` (default: personal data as SHA-256 of the normalised value) or
      ``raw`` (the normalised values themselves; say so explicitly, and only over TLS).
    - ``send_keys``: include each member's profile key (default true).
    - ``batch_size``: members per event (at most 10,000).
    - ``registry_path``: the file that remembers the audiences this integration created
      (default ``.reconcile/webhook-<integration>.json``, relative to the workspace).
    """

    url: str | None = Field(
        None, description="the receiver's URL (https)", json_schema_extra={"pattern": URL_PATTERN}
    )
    identifiers: list[str] = Field(
        default_factory=lambda: ["email", "phone"],
        min_length=1,
        description="identifier types sent, in preference order",
        json_schema_extra={"items": {"enum": list(TYPES)}, "uniqueItems": True},
    )
    pii: Literal["hashed", "raw"] = Field(
        "hashed", description="hashed (SHA-256) or raw (normalised values) personal data"
    )
    send_keys: bool = Field(True, description="include each member's profile key")
    batch_size: int = Field(500, ge=1, le=10_000, description="members per event")
    registry_path: str | None = Field(
        None, description="file of the audiences this integration created"
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_url(value)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("identifiers")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return check_identifier_types(value)


class WebhookCredentials(Credentials):
    """The signing secret, ``whsec_<base64>`` as Standard Webhooks issues it."""

    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr) -> SecretStr:
        problem = secret_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value
