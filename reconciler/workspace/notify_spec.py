"""Models of notifications: the workspace's delivery settings (mail server, webhook secret)
and an activation's ``notify:`` (which events, to which addresses and webhooks)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from reconciler.workspace import schema_rules as rules
from reconciler.workspace.spec_base import (
    EMAIL_PATTERN,
    EMAIL_RE,
    ENV_REF_RE,
    FieldError,
    Strict,
    env_reference,
    is_loopback,
)


class SmtpSettings(Strict):
    """The mail server notifications are sent through."""

    host: str = Field(min_length=1, description="the mail server's host name")
    port: int | None = Field(
        None, ge=1, le=65535, description="default: 587 (starttls), 465 (tls), 25 (none)"
    )
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls, tls, or none (only to a loopback host)"
    )
    username: str | None = Field(
        None,
        description="an ${env:VAR} reference",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    password: str | None = Field(
        None,
        description="an ${env:VAR} reference",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    from_address: str = Field(
        alias="from",
        description="the sender address",
        json_schema_extra={"pattern": EMAIL_PATTERN},
    )
    model_config = ConfigDict(json_schema_extra=rules.SMTP)

    @field_validator("username", "password", mode="before")
    @classmethod
    def _references_only(cls, value: Any, info) -> Any:
        return env_reference(value, f"`{info.field_name}`")

    @field_validator("from_address")
    @classmethod
    def _valid_sender(cls, value: str) -> str:
        if not EMAIL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SmtpSettings:
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise FieldError("set both `username` and `password`, or neither", missing)
        if self.security == "none" and not is_loopback(self.host):
            raise FieldError(
                "`security: none` sends mail unencrypted and is only allowed to a loopback "
                f"host (localhost, 127.0.0.1), not {self.host!r}; use starttls or tls",
                "security",
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]


class NotificationSettings(Strict):
    """``notifications:`` in reconcile.yaml: how run notifications are delivered."""

    smtp: SmtpSettings | None = Field(None, description="the mail server e-mail is sent through")
    webhook_secret: str | None = Field(
        None,
        description="${env:VAR} holding a Standard Webhooks secret (whsec_...)",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    templates: str | None = Field(
        None,
        description="workspace folder with overrides of the notification templates",
        json_schema_extra={"pattern": rules.RELATIVE_PATH_PATTERN},
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _secret_reference(cls, value: Any) -> Any:
        return env_reference(value, "`webhook_secret`")

    @field_validator("templates")
    @classmethod
    def _inside_workspace(cls, value: str) -> str:
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "~")) or ".." in parts or ":" in value:
            raise ValueError("must be a folder inside the workspace (a relative path, no '..')")
        return value


class NotifyEvent(StrEnum):
    """What a run notification can be sent for (``notify.on``)."""

    COMPLETE = "complete"
    FAILED = "failed"
    DISABLED = "disabled"
    MASS_REMOVAL = "mass_removal"


class NotifySpec(Strict):
    """``notify:`` on an activation: who is told after each run, and for which outcomes.
    The short form ``notify: [a@x.com, ...]`` means ``notify: {email: [...]}``."""

    email: list[str] = Field(
        default_factory=list,
        description="e-mail addresses",
        json_schema_extra={"items": {"type": "string", "pattern": EMAIL_PATTERN}},
    )
    webhook: list[str] = Field(
        default_factory=list,
        description="https URLs (http only to loopback), or ${env:VAR} holding one",
        json_schema_extra={
            "items": {"type": "string", "pattern": f"{rules.ENV_REF_PATTERN}|{rules.URL_PATTERN}"}
        },
    )
    on: list[NotifyEvent] = Field(
        default_factory=lambda: list(NotifyEvent),
        description="default: every run",
        json_schema_extra={"minItems": 1},
    )

    @field_validator("email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for i, address in enumerate(value):
            if not EMAIL_RE.fullmatch(address):
                raise FieldError(f"{address!r} is not an e-mail address", i)
        return value

    @field_validator("webhook")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for i, url in enumerate(value):
            if ENV_REF_RE.fullmatch(url):
                continue
            problem = webhook_url_problem(url)
            if problem:
                raise FieldError(problem, i)
        return value

    @field_validator("on")
    @classmethod
    def _some_event(cls, value: list[NotifyEvent]) -> list[NotifyEvent]:
        if not value:
            raise ValueError(
                f"list at least one of {[e.value for e in NotifyEvent]}, or leave `on` out "
                "to be told after every run"
            )
        return value

    @property
    def configured(self) -> bool:
        return bool(self.email or self.webhook)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive notifications (None when it can): https, or http to a
    loopback host. The message never repeats the URL (it may hold a token)."""
    if any(c.isspace() or not c.isprintable() for c in url):  # a CI secret's trailing newline
        return "a webhook URL may not hold spaces, line breaks or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "a webhook must be an https:// URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and is_loopback(host):
        return None
    if parts.scheme == "http" and host:
        return "a webhook must use https:// (plain http:// only to localhost / 127.0.0.1)"
    return "a webhook must be an https:// URL"


#: an e-mail address, for the schema of ``notify: [a@x.com, ...]``
