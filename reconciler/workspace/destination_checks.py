"""What the workspace asks of its destinations, checked against their installed adapters: the
``type`` exists, ``config`` and ``credentials`` are the adapter's own, an ``endpoint`` is
https (plain http only to a loopback host), every credential's environment variable is set,
and every activation asks only for what its destination can do (removals, attributes,
renaming: :class:`destinations.base.Capabilities`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from reconciler.errors import ConfigError, ValidationFailed
from reconciler.webhook_secrets import secret_problem
from reconciler.workspace import yamlfile
from reconciler.workspace.activation_spec import ActionMode, Activation, Goal
from reconciler.workspace.export_checks import export_errors
from reconciler.workspace.notify_spec import webhook_url_problem
from reconciler.workspace.spec import Integration, PostgresSource
from reconciler.workspace.spec_base import ENV_REF_RE

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace


def check_integration_config(
    doc: yamlfile.YamlDoc, integ: Integration, errors: list[ConfigError]
) -> None:
    from destinations import registry

    try:
        factory = registry.load(integ.type)
    except ConfigError as exc:
        errors.append(doc.error(exc.message, ("type",)))
        return
    problems = _config_errors(doc, factory, integ.config)
    errors.extend(problems)
    # what the adapter checks across its config and the integration (no I/O)
    check = getattr(factory, "config_problems", None)
    if not problems and check is not None:
        config = factory.config_model.model_validate(integ.config)
        for message, where in check(config, getattr(integ, "endpoint", None)):
            errors.append(doc.error(message, where))
    # the credentials' names (their values are only read when a destination is called)
    takes = factory.credentials_model.model_fields
    for key in integ.credentials:
        if key not in takes:
            errors.append(
                doc.error(
                    f"destination type {integ.type!r} takes no credential {key!r} "
                    f"(it takes: {', '.join(sorted(takes)) or 'none'})",
                    ("credentials", key),
                )
            )
    for key in sorted(k for k, f in takes.items() if f.is_required()):
        if key not in integ.credentials:
            errors.append(
                doc.error(
                    f"destination type {integ.type!r} needs credential {key!r}: add "
                    f"`{key}: ${{env:VAR}}` under `credentials`",
                    ("credentials",),
                )
            )


def unparsed_config_errors(doc: yamlfile.YamlDoc) -> list[ConfigError]:
    """The ``config:`` problems of an integration file whose other fields were refused (its
    ``type`` named and ``config`` a mapping): reported with them, not after they are fixed."""
    from destinations import registry

    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return []
    config = data.get("config", {})
    if not isinstance(config, dict):
        return []
    try:
        factory = registry.load(data["type"])
    except ConfigError:  # reported with the other fields
        return []
    return _config_errors(doc, factory, config)


def _config_errors(doc: yamlfile.YamlDoc, factory: Any, config: Any) -> list[ConfigError]:
    """The problems of ``config:`` against the adapter's own config model."""
    try:
        factory.config_model.model_validate(config)
    except ValidationError as exc:
        return yamlfile.validation_errors(doc, exc, ("config",))
    return []


def endpoint_errors(doc: yamlfile.YamlDoc, endpoint: str) -> list[ConfigError]:
    """An endpoint must be https; plain http only to a loopback host (a local test server)."""
    import httpx

    from destinations.http import check_url

    try:
        check_url(endpoint)
    except ConfigError as exc:
        return [doc.error(exc.message, ("endpoint",))]
    except httpx.InvalidURL as exc:
        return [doc.error(f"endpoint is not a URL: {exc}", ("endpoint",))]
    return []


def missing_credentials(ws: Workspace) -> list[ConfigError]:
    """One error per credential whose environment variable is not set (or empty). Names the
    variable, never a value."""
    out = []
    source = ws.config.source
    dsn_var = ENV_REF_RE.fullmatch(source.dsn) if isinstance(source, PostgresSource) else None
    if dsn_var is not None and _blank(dsn_var.group(1)):
        out.append(
            ConfigError(
                f"the source DSN comes from environment variable {dsn_var.group(1)}, which is "
                f"{_blank(dsn_var.group(1))}; set it (in CI: from a secret) to a PostgreSQL "
                "connection string",
                ws.config_location("source", "dsn"),
            )
        )
    for name, integ in ws.integrations.items():
        values: dict[str, str] = {}
        for key, ref in integ.credentials.items():
            match = ENV_REF_RE.fullmatch(ref)
            if match is None:  # refused by the spec already
                continue
            var = match.group(1)
            if _blank(var):
                out.append(
                    ws.doc("integrations", name).error(
                        f"integration {name!r} needs credential {key!r} from environment "
                        f"variable {var}, which is {_blank(var)}; set it (in CI: from a "
                        "secret), or use `plan --refresh=false`, which contacts no destination",
                        ("credentials", key),
                    )
                )
            else:
                values[key] = os.environ[var]
        if values and len(values) == len(integ.credentials):
            out += _malformed_credentials(ws, name, integ.type, values)
    return out + _missing_notification_secrets(ws)


def _malformed_credentials(
    ws: Workspace, name: str, type_name: str, values: dict[str, str]
) -> list[ConfigError]:
    """The set credentials checked by the adapter's own model (a webhook secret's
    ``whsec_`` form...), as ``plan`` does: the message names the credential, never a value."""
    from destinations import registry

    try:
        factory = registry.load(type_name)
    except ConfigError:  # reported by the schema check
        return []
    takes = factory.credentials_model.model_fields
    required = {k for k, f in takes.items() if f.is_required()}
    if not set(values) <= set(takes) or not required <= set(values):
        return []  # an unknown or a missing credential: reported by the schema check
    try:
        factory.credentials_model.from_mapping(values, integration=name)
    except ConfigError as exc:
        return [ws.doc("integrations", name).error(exc.message, ("credentials",))]
    return []


def _blank(var: str) -> str:
    """Why the variable holds no usable value ("not set", "empty", "only whitespace"), or ""."""
    value = os.environ.get(var)
    if value is None:
        return "not set"
    if not value:
        return "empty"
    return "only whitespace" if not value.strip() else ""


def _missing_notification_secrets(ws: Workspace) -> list[ConfigError]:
    """One error per ``${env:VAR}`` of the notification settings (mail server login, webhook
    secret) and of each activation's webhook URLs whose variable is not set: a notification
    that cannot be delivered is found before the run it reports on, not in its log."""

    def unset(ref: str | None) -> str | None:
        match = ENV_REF_RE.fullmatch(ref or "")
        return match.group(1) if match is not None and _blank(match.group(1)) else None

    out = []
    settings = ws.config.notifications
    refs: list[tuple[tuple[str | int, ...], str | None]] = []
    if settings is not None:
        refs.append((("notifications", "webhook_secret"), settings.webhook_secret))
        if settings.smtp is not None:
            refs.append((("notifications", "smtp", "username"), settings.smtp.username))
            refs.append((("notifications", "smtp", "password"), settings.smtp.password))
    for loc, ref in refs:
        if var := unset(ref):
            out.append(
                ConfigError(
                    f"notifications need environment variable {var}, which is {_blank(var)}; "
                    "set it (in CI: from a secret)",
                    ws.config_location(*loc),
                )
            )
        elif (
            loc[-1] == "webhook_secret"
            and (match := ENV_REF_RE.fullmatch(ref or ""))
            and (problem := secret_problem(os.environ[match.group(1)]))
        ):  # found now, not after the run as an undelivered notification
            out.append(
                ConfigError(
                    f"the signing secret in environment variable {match.group(1)} {problem}",
                    ws.config_location(*loc),
                )
            )
    for name, act in ws.activations.items():
        for i, url in enumerate(act.notify.webhook):
            if var := unset(url):
                out.append(
                    ws.doc("activations", name).error(
                        f"the notification webhook comes from environment variable {var}, "
                        f"which is {_blank(var)}; set it (in CI: from a secret)",
                        ("notify", "webhook", i),
                    )
                )
            # the URL a variable holds is checked as a written one is (never repeated: a token)
            elif (match := ENV_REF_RE.fullmatch(url or "")) and (
                problem := webhook_url_problem(os.environ[match.group(1)])
            ):
                out.append(
                    ws.doc("activations", name).error(
                        f"{problem} (in environment variable {match.group(1)})",
                        ("notify", "webhook", i),
                    )
                )
    return out


def capabilities_of(type_name: str) -> Any:
    """The declared :class:`~destinations.base.Capabilities` of an installed adapter type, or
    None when the type is unknown (reported elsewhere) or declares them per instance."""
    from destinations import registry
    from destinations.base import Capabilities

    try:
        factory = registry.load(type_name)
    except ConfigError:
        return None
    caps = getattr(factory, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else None


def capability_errors(
    doc: yamlfile.YamlDoc, act: Activation, destination: str, caps: Any
) -> list[ConfigError]:
    """What ``act`` (resolved with the workspace defaults) asks of a destination that cannot
    do it: removals, clearing on delete, mapped attributes."""
    out = []
    if not caps.remove and act.goal is not Goal.SYNC_ATTRIBUTES:  # it never removes
        if act.action in (ActionMode.MAINTAIN, ActionMode.REMOVE):
            out.append(
                doc.error(
                    f"`action: {act.action.value}` removes members, but destination "
                    f"{destination!r} cannot remove members; use `action: append`",
                    ("action",),
                )
            )
        if act.on_delete == "clear":
            out.append(
                doc.error(
                    f"`on_delete: clear` removes every member, but destination {destination!r} "
                    "cannot remove members; use `on_delete: keep`",
                    ("on_delete",),
                )
            )
    out += export_errors(doc, act, destination, caps)
    if not caps.attributes and act.attributes and act.goal is not Goal.SYNC_ATTRIBUTES:
        out.append(
            doc.error(
                f"destination {destination!r} does not take attributes; remove `attributes`",
                ("attributes",),
            )
        )
    return out


def check_renames(ws: Workspace, renamed: Iterable[str]) -> None:
    """Raise ValidationFailed for activations (ids) whose plan renames an existing audience
    at a destination that cannot rename audiences: the change of ``name`` is the error."""
    errors = []
    for aid in renamed:
        act = ws.activations.get(aid)
        integ = ws.integrations.get(act.destination) if act else None
        caps = capabilities_of(integ.type) if integ else None
        if act is None or caps is None or caps.rename:
            continue
        errors.append(
            ws.doc("activations", aid).error(
                f"the audience name changed, but destination {act.destination!r} cannot rename "
                "an audience; keep the old name, or create a new audience (a new activation)",
                ("name",),
            )
        )
    if errors:
        raise ValidationFailed(errors)
