"""The rules of the workspace models that pydantic cannot derive for the JSON Schema
(``reconcile schema``): patterns for what the validators check in code, and the models'
cross-field rules as ``if``/``then``, so an editor refuses what ``validate`` refuses.
Used by ``spec.py`` (``json_schema_extra``); keep each in step with its validator."""

from __future__ import annotations

from functools import cache
from typing import Any

#: a loopback host as URLs and the mail server name it
LOOPBACK_HOST = (
    r"(localhost|[A-Za-z0-9.-]*\.localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])"
)
#: a loopback host as ``destinations.http.check_url`` accepts one for plain http: localhost
#: in any case with or without its final dot, 127.x.y.z, [::1] (not a name under .localhost,
#: which a resolver may send elsewhere)
_HTTP_LOOPBACK = (
    r"([Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt]\.?|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])"
)
#: a TCP port, 1-65535
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: https://..., or plain http:// to a loopback host
URL_PATTERN = (
    rf"^(https://([^/?#:\s\[\]]+|\[[0-9A-Fa-f:.]+\])(:{_PORT})?"
    rf"|http://{_HTTP_LOOPBACK}(:{_PORT})?)([/?#][^\s]*)?$"
)
#: an audience name as written: no control, line-separator, direction-override or invisible
#: character (templating.render_name refuses them in what a template renders)
NAME_TEXT_PATTERN = (
    "^(?=[\\s\\S]*\\S)[^\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\u00ad\u061c\u180e\u200b\u200e\u200f\u2060-\u2064\u206a-\u206f\ufeff]*$"
)
ENV_REF_PATTERN = r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$"


def _anycase(word: str) -> str:
    """``word`` as a pattern matching it in any case (JSON Schema regexes have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


#: 'name' or 'schema.name', whose first part is not a schema of the database's own catalog
#: (information_schema, system, temp, pg_*) nor reconcile's own (__reconcile*): the source
#: spec's validator refuses those
TABLE_NAME_PATTERN = (
    rf"^(?!({_anycase('information_schema')}|{_anycase('system')}|{_anycase('temp')})(\.|$)"
    rf"|{_anycase('pg_')}|{_anycase('__reconcile')})"
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
)
#: a relative path inside the workspace: no leading / or ~, no '..' part, no ':'
RELATIVE_PATH_PATTERN = r"^(?![/~])(?!.*:)(?!(.*[/\\])?\.\.([/\\]|$)).*$"


def env_ref_values(schema: dict[str, Any]) -> None:
    schema["additionalProperties"] = {"type": "string", "pattern": ENV_REF_PATTERN}


@cache
def timezones() -> frozenset[str]:
    """The IANA names of this system's time zone database (also what ``validate`` takes:
    not the aliases ``ZoneInfo`` would also open, such as ``posix/...``, nor ``localtime``,
    the machine's own zone: values must read the same on every machine, and the engine
    knows no such zone)."""
    from zoneinfo import available_timezones

    return frozenset(available_timezones() - {"localtime"})


def known_timezones(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(timezones())


def _not_null(*path: str) -> dict[str, Any]:
    """A schema: the object has ``path`` (e.g. ``list``, ``existing``) set to a non-null value."""
    inner: dict[str, Any] = {"not": {"type": "null"}}
    for key in reversed(path):
        inner = {"required": [key], "properties": {key: inner}}
    return inner


def _when(condition: dict[str, Any], then: dict[str, Any] | bool) -> dict[str, Any]:
    return {"if": condition, "then": then}


_SPLIT = {"required": ["split"], "properties": {"split": {"enum": ["ab", "control"]}}}
_EXISTING = _not_null("list", "existing")
#: the rules of :meth:`Activation._coherent`, for the JSON Schema
ACTIVATION: Any = {
    "allOf": [
        _when(
            {
                "allOf": [
                    _SPLIT,
                    {"required": ["action"], "properties": {"action": {"const": "remove"}}},
                ]
            },
            False,
        ),
        _when(
            {
                "allOf": [
                    _SPLIT,
                    {
                        "required": ["goal"],
                        "properties": {"goal": {"not": {"const": "send_segments"}}},
                    },
                ]
            },
            False,
        ),
        _when(
            _not_null("control_percent"),
            {"required": ["split"], "properties": {"split": {"const": "control"}}},
        ),
        _when(
            {
                "allOf": [
                    {"required": ["adopt"], "properties": {"adopt": {"const": True}}},
                    _EXISTING,
                ]
            },
            False,
        ),
        _when({"required": ["action"], "properties": {"action": {"const": "remove"}}}, _EXISTING),
        _when(
            {
                "required": ["action", "on_delete"],
                "properties": {"action": {"const": "remove"}, "on_delete": {"const": "clear"}},
            },
            False,
        ),
        _when(
            {
                "required": ["list"],
                "properties": {
                    "list": {
                        "required": ["existing"],
                        "properties": {"existing": {"type": "object"}},
                    }
                },
            },
            {"required": ["split"], "properties": {"split": {"const": "ab"}}},
        ),
        _when(
            {
                "required": ["split", "list"],
                "properties": {
                    "split": {"const": "ab"},
                    "list": {
                        "required": ["existing"],
                        "properties": {"existing": {"type": "string"}},
                    },
                },
            },
            False,
        ),
    ]
}

#: :class:`~reconciler.workspace.activation_spec.ListTarget`: ``create: true`` or ``existing``, not both
LIST_TARGET: Any = {
    "allOf": [
        {
            "if": _not_null("existing"),
            "then": {"properties": {"create": {"type": "null"}}},
            "else": {"required": ["create"], "properties": {"create": {"const": True}}},
        }
    ]
}

#: :class:`~reconciler.workspace.notify_spec.SmtpSettings`: both credentials or neither;
#: ``security: none`` only to a loopback host
SMTP: Any = {
    "dependentRequired": {"username": ["password"], "password": ["username"]},
    "allOf": [
        _when(
            {"required": ["security"], "properties": {"security": {"const": "none"}}},
            {"properties": {"host": {"pattern": f"^{LOOPBACK_HOST}$"}}},
        )
    ],
}
