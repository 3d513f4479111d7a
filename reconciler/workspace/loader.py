"""Find and load a workspace into validated models. Every problem is collected (``validate``
reports them all at once), each naming its file, line and field.

Integrations are checked against their installed adapter: the ``type`` exists, the
``config`` has only fields the adapter knows, an ``endpoint`` is https (plain http only to a
loopback host), and every activation asks only for what its destination can do
(:class:`destinations.base.Capabilities`). With ``check_credentials`` (``validate``, ``plan``
that contacts destinations, ``apply``) every credential's environment variable must be set,
so a missing secret is found before anything is sent, never half-way through an apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.errors import ConfigError, Location, ValidationFailed
from reconciler.workspace import yamlfile
from reconciler.workspace.activation_spec import Activation
from reconciler.workspace.destination_checks import (
    capabilities_of,
    capability_errors,
    check_integration_config,
    endpoint_errors,
    missing_credentials,
    unparsed_config_errors,
)
from reconciler.workspace.file_checks import reserved_path_errors, state_path_errors, unread_files
from reconciler.workspace.goal_rules import goal_errors
from reconciler.workspace.spec import Integration, PostgresSource, Segment, WorkspaceConfig
from reconciler.workspace.spec_base import NAME_RE

CONFIG_FILE = "reconcile.yaml"
KINDS: dict[str, type[BaseModel]] = {
    "integrations": Integration,
    "segments": Segment,
    "activations": Activation,
}


@dataclass
class Workspace:
    root: Path
    config: WorkspaceConfig
    integrations: dict[str, Integration] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    activations: dict[str, Activation] = field(default_factory=dict)
    docs: dict[str, yamlfile.YamlDoc] = field(default_factory=dict)
    #: "kind/name" of every file found, also those that failed to load (already reported)
    files: set[str] = field(default_factory=set)

    def doc(self, kind: str, name: str) -> yamlfile.YamlDoc:
        return self.docs[f"{kind}/{name}"]

    def location(self, kind: str, name: str, *loc: str | int) -> Location:
        key = f"{kind}/{name}"
        if key in self.docs:
            return self.docs[key].location(tuple(loc))
        return Location(f"{kind}/{name}.yaml")

    def config_location(self, *loc: str | int) -> Location:
        """Where in reconcile.yaml a setting is (its line, or the nearest enclosing one)."""
        if CONFIG_FILE in self.docs:
            return self.docs[CONFIG_FILE].location(tuple(loc))
        return Location(CONFIG_FILE, None, ".".join(str(p) for p in loc) or None)

    def file_of(self, kind: str, name: str) -> str:
        key = f"{kind}/{name}"
        return self.docs[key].display if key in self.docs else f"{kind}/{name}.yaml"

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p


def find_root(start: Path) -> Path:
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_FILE} in {start} or any parent directory; run `reconcile init` to "
        "create a workspace, or pass -C DIR"
    )


def load(
    root: Path, *, check_destinations: bool = True, check_credentials: bool = False
) -> Workspace:
    """Load and validate everything under ``root``; raise ValidationFailed listing all errors.
    ``check_credentials``: every credential's environment variable must be set."""
    ws, errors = collect(
        root, check_destinations=check_destinations, check_credentials=check_credentials
    )
    if errors:
        raise ValidationFailed(errors)
    return ws


def collect(
    root: Path, *, check_destinations: bool = True, check_credentials: bool = False
) -> tuple[Workspace, list[ConfigError]]:
    """What :func:`load` does, returning the workspace (the files that loaded) and every
    error instead of raising them."""
    errors: list[ConfigError] = []
    config_doc = _load_doc(root / CONFIG_FILE, root, errors)
    config = WorkspaceConfig()
    config_ok = config_doc is not None or not (root / CONFIG_FILE).exists()
    if config_doc is not None:
        parsed = _parse(config_doc, WorkspaceConfig, errors)
        config = parsed if parsed is not None else config
        config_ok = parsed is not None
    ws = Workspace(root=root, config=config)
    if config_doc is not None:
        ws.docs[CONFIG_FILE] = config_doc
    for kind, model in KINDS.items():
        target: dict[str, Any] = getattr(ws, kind)
        errors.extend(unread_files(root, kind))
        for path in _yaml_files(root / kind):
            name = path.stem
            if f"{kind}/{name}" in ws.files:
                errors.append(
                    ConfigError(
                        f"two files define the {kind[:-1]} {name!r}; keep one of {name}.yaml and "
                        f"{name}.yml",
                        Location(str(path.relative_to(root))),
                    )
                )
                continue
            ws.files.add(f"{kind}/{name}")
            doc = _load_doc(path, root, errors)
            if doc is None:
                continue
            ws.docs[f"{kind}/{name}"] = doc
            if not NAME_RE.match(name):
                errors.append(
                    doc.error(
                        f"file name {path.name!r} is not a valid {kind[:-1]} id: rename it using "
                        "only lowercase letters, digits, '-' and '_' (starting with a letter or digit)"
                    )
                )
                continue
            item = _parse(doc, model, errors)
            if item is not None:
                target[name] = item
            elif kind == "integrations" and check_destinations:
                # its `config:` too, so that every problem is reported at once
                errors.extend(unparsed_config_errors(doc))
    if not config_ok:
        # the files are checked against reconcile.yaml: against the defaults that stand in
        # for a broken one they would report problems that are not there
        return ws, errors
    _cross_check(ws, errors, check_destinations)
    if check_credentials:
        errors.extend(missing_credentials(ws))
    _check_templates(ws, errors)
    return ws, errors


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # not only regular files: a broken link or a pipe named like one is reported when read
    # (skipped, the activation it stood for would be planned as deleted)
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.is_dir())


def _load_doc(path: Path, root: Path, errors: list[ConfigError]) -> yamlfile.YamlDoc | None:
    try:
        doc = yamlfile.load(path, root)
    except ConfigError as exc:
        errors.append(exc)
        return None
    if doc.data is None:
        doc = yamlfile.YamlDoc(doc.path, doc.display, {}, doc.node)
    if not isinstance(doc.data, dict):
        errors.append(doc.error("the file must hold a mapping of fields (key: value)"))
        return None
    return doc


def _parse(doc: yamlfile.YamlDoc, model: type[BaseModel], errors: list[ConfigError]) -> Any:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        errors.extend(yamlfile.validation_errors(doc, exc))
        return None


def _cross_check(ws: Workspace, errors: list[ConfigError], check_destinations: bool) -> None:
    cfg_loc = ws.docs.get(CONFIG_FILE)
    for i, seg in enumerate(ws.config.suppression):
        if _missing(ws, "segments", seg) and cfg_loc is not None:
            errors.append(cfg_loc.error(_unknown("segment", seg, ws.segments), ("suppression", i)))
    if cfg_loc is not None:
        errors.extend(state_path_errors(ws, cfg_loc))
    profile_columns = set(ws.config.source.profiles.attributes)
    for name, integ in ws.integrations.items():
        doc = ws.doc("integrations", name)
        if check_destinations:
            check_integration_config(doc, integ, errors)
        if integ.endpoint is not None:
            errors.extend(endpoint_errors(doc, integ.endpoint))
        errors.extend(reserved_path_errors(ws, doc, integ))
        for dest_field, column in integ.attributes.items():
            if profile_columns and column not in profile_columns:
                errors.append(
                    doc.error(
                        f"maps to {column!r}, which is not an attribute column of the profiles "
                        f"table (declared: {sorted(profile_columns)})",
                        ("attributes", dest_field),
                    )
                )
    claims: dict[str, str] = {}  # moved_from -> the first activation that names it
    for name, act in ws.activations.items():
        doc = ws.doc("activations", name)
        for i, seg in enumerate(act.segments):
            if _missing(ws, "segments", seg):
                errors.append(doc.error(_unknown("segment", seg, ws.segments), ("segments", i)))
        found = ws.integrations.get(act.destination)
        if found is None and _missing(ws, "integrations", act.destination):
            errors.append(
                doc.error(
                    _unknown("integration", act.destination, ws.integrations), ("destination",)
                )
            )
        elif found is not None:
            caps = capabilities_of(found.type) if check_destinations else None
            if caps is not None:
                resolved = act.resolved(ws.config.defaults)
                errors.extend(capability_errors(doc, resolved, act.destination, caps))
            errors.extend(goal_errors(ws, name, act, caps))
            for i, attr in enumerate(act.attributes):
                if attr not in found.attributes:
                    errors.append(
                        doc.error(
                            f"attribute {attr!r} is not in the mapping of integration "
                            f"{act.destination!r} (allowed: {sorted(found.attributes)})",
                            ("attributes", i),
                        )
                    )
        if act.moved_from == name:
            errors.append(doc.error("moved_from names this activation itself", ("moved_from",)))
        elif act.moved_from is not None and act.moved_from in ws.activations:
            errors.append(
                doc.error(
                    f"moved_from {act.moved_from!r}, but activations/{act.moved_from}.yaml still "
                    "exists; delete the old file in the same change",
                    ("moved_from",),
                )
            )
        elif act.moved_from is not None and not NAME_RE.match(act.moved_from):
            errors.append(
                doc.error(
                    f"moved_from {act.moved_from!r} is not an activation id (the old file's "
                    "name without .yaml)",
                    ("moved_from",),
                )
            )
        elif act.moved_from is not None and act.moved_from in claims:
            # two heirs would share one state and one audience: which one owns it?
            errors.append(
                doc.error(
                    f"moved_from {act.moved_from!r} is claimed by activations/"
                    f"{claims[act.moved_from]}.yaml too; an activation moves to one new id",
                    ("moved_from",),
                )
            )
        if act.moved_from is not None:
            claims.setdefault(act.moved_from, name)
        notifications = ws.config.notifications
        if act.notify.email and (notifications is None or notifications.smtp is None):
            short = isinstance(doc.data.get("notify"), list)
            errors.append(
                doc.error(
                    "e-mail notifications need a mail server: add `notifications: {smtp: "
                    "{host: ..., from: ...}}` to reconcile.yaml (see docs/notifications.md)",
                    ("notify",) if short else ("notify", "email"),
                )
            )


def _missing(ws: Workspace, kind: str, name: str) -> bool:
    """True when no file defines ``name`` (a file that failed to load has its own error)."""
    return name not in getattr(ws, kind) and f"{kind}/{name}" not in ws.files


def _check_templates(ws: Workspace, errors: list[ConfigError]) -> None:
    """What can be checked without the data: segment SQL renders and is one allowed SELECT,
    consent conditions are allowed SQL, audience names render."""
    from datetime import UTC, datetime

    from reconciler.sources import sql_policy
    from reconciler.sources.base import SqlRejected, check_segment_sql
    from reconciler.sources.guard import check_condition
    from reconciler.workspace.templating import (
        DEFAULT_NAME,
        TemplateFailed,
        render_name,
        render_sql,
    )

    now = datetime.now(UTC)
    tz = ws.config.timezone
    dialect = "postgres" if isinstance(ws.config.source, PostgresSource) else "duckdb"
    policy = sql_policy(ws.config.source)
    if ws.config.source.freshness_sql:
        try:
            check_segment_sql(
                render_sql(ws.config.source.freshness_sql, now, tz), dialect, policy=policy
            )
        except (TemplateFailed, SqlRejected) as exc:
            errors.append(
                ConfigError(f"freshness_sql: {exc}", ws.config_location("source", "freshness_sql"))
            )
    for name, seg in ws.segments.items():
        doc = ws.doc("segments", name)
        try:
            check_segment_sql(render_sql(seg.sql, now, tz), dialect, policy=policy)
        except (TemplateFailed, SqlRejected) as exc:
            where = doc.text_location(("sql",), exc.line)
            errors.append(ConfigError(f"segment {name!r}: {exc}", where))
    for name, integ in ws.integrations.items():
        if integ.consent is not None:
            try:
                check_condition(integ.consent, dialect, policy)
            except SqlRejected as exc:
                # a parse position would point into our wrapping query: leave it out
                why = "" if str(exc).startswith("SQL does not parse") else f" ({exc})"
                errors.append(
                    ws.doc("integrations", name).error(
                        "the consent condition must be one true/false SQL condition over the "
                        f"profiles columns, e.g. `email_consent AND country = 'AU'`{why}",
                        ("consent",),
                    )
                )
    for name, act in ws.activations.items():
        try:
            render_name(
                act.name or DEFAULT_NAME,
                as_of=now,
                timezone=tz,
                date_created=now.date(),
                activation=name,
                segments=act.segments,
            )
        except TemplateFailed as exc:
            errors.append(ws.doc("activations", name).error(str(exc), ("name",)))
    notifications = ws.config.notifications
    if notifications is not None and notifications.templates is not None:
        from reconciler.notify.messages import check_template_folder

        for problem in check_template_folder(ws.root, notifications.templates):
            where = (
                Location(problem.file, problem.line)
                if problem.file is not None
                else ws.config_location("notifications", "templates")
            )
            errors.append(ConfigError(problem.message, where))


def _unknown(kind: str, name: str, known: dict) -> str:
    listing = ", ".join(sorted(known)) or "none defined"
    return f"unknown {kind} {name!r} (known: {listing})"
