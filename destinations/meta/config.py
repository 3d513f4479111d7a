"""The validated ``config:`` and ``credentials:`` of a ``type: meta_custom_audiences``
integration."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from destinations.http import HttpOptions
from destinations.identity import META
from destinations.redaction import Credentials

__all__ = ["MAX_ROWS", "MetaConfig", "MetaCredentials"]

#: Meta takes at most this many rows in one ``/users`` request
MAX_ROWS = 10_000

CustomerFileSource = Literal[
    "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"
]


class MetaConfig(HttpOptions):
    """Which ad account, which Graph API version, what is matched on, and how fast.

    ``identifiers`` are identifier types of ``destinations.identity.META`` (``email``,
    ``phone``, ``madid``, ``external_id``, names, ...), in preference order. One type that
    Meta has a single-key schema for (email, phone, madid) is sent as that schema
    (``EMAIL_SHA256``); anything else as the multi-key schema (``["EMAIL", "PHONE"]``)."""

    ad_account_id: str = Field(
        description="the ad account's digits, with or without act_",
        json_schema_extra={
            "type": ["string", "integer"],
            "pattern": r"^\s*(act_)?[0-9]{1,20}\s*$",
            "minimum": 0,
            "maximum": 10**20 - 1,
        },
    )
    api_version: str = Field(
        "v24.0",
        description="Graph API version, e.g. v24.0",
        json_schema_extra={"pattern": r"^v[0-9]{1,3}\.[0-9]{1,2}$"},
    )
    identifiers: list[str] = Field(
        default_factory=lambda: ["email", "phone"],
        min_length=1,
        description="identifier types sent, in preference order",
        json_schema_extra={"items": {"enum": list(META.identifiers)}},
    )
    customer_file_source: CustomerFileSource = Field(
        "USER_PROVIDED_ONLY", description="where the customer data came from, as Meta asks"
    )
    batch_size: int = Field(MAX_ROWS, ge=1, le=MAX_ROWS, description="members per request")
    throttle_backoff_seconds: float = Field(
        30.0, gt=0, le=3600, description="first wait after a throttle that names no time"
    )
    requests_per_minute: float | None = Field(
        None, gt=0, le=6000, description="cap on requests; Meta's usage header paces too"
    )
    concurrency: int = Field(
        4,
        ge=1,
        le=16,
        description="requests in flight at once (a session's last batch waits for the others)",
    )

    @field_validator("ad_account_id", mode="before")
    @classmethod
    def _digits(cls, value: object) -> str:
        text = str(value).strip() if isinstance(value, str | int) else ""
        digits = text.removeprefix("act_")
        if not re.fullmatch(r"[0-9]{1,20}", digits):
            raise ValueError("must be the ad account's digits, optionally prefixed with act_")
        return digits

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"v[0-9]{1,3}\.[0-9]{1,2}", value):
            raise ValueError("must look like v24.0")
        return value

    @field_validator("identifiers")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        known = META.identifiers
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(
                f"Meta cannot match on {', '.join(unknown)}; use some of {', '.join(known)}"
            )
        return list(dict.fromkeys(value))

    @property
    def account(self) -> str:
        """``act_<digits>``, as paths name it."""
        return f"act_{self.ad_account_id}"


class MetaCredentials(Credentials):
    """``access_token`` (a system user token with ``ads_management``); ``app_secret``
    (optional) makes every call carry ``appsecret_proof``, which apps that require it
    refuse calls without."""

    access_token: SecretStr
    app_secret: SecretStr | None = None

    def appsecret_proof(self) -> str | None:
        """Hex HMAC-SHA256 of the token keyed by the app secret, or None without a secret."""
        if self.app_secret is None:
            return None
        key = self.app_secret.get_secret_value().encode()
        token = self.access_token.get_secret_value().encode()
        return hmac.new(key, token, hashlib.sha256).hexdigest()
