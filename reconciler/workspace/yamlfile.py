"""YAML files with their line numbers: every error can name ``file:line: field``.

PyYAML composes a node tree (which keeps marks) and we build plain data from it ourselves,
so duplicate keys are errors (PyYAML would keep the last silently) and a pydantic error
location such as ``("list", "existing")`` maps back to the line that holds it.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler.errors import ConfigError, Location


@dataclass(frozen=True)
class YamlDoc:
    path: Path
    display: str  # path relative to the workspace, for messages
    data: Any
    node: yaml.Node | None

    def line(self, loc: tuple[str | int, ...] = ()) -> int | None:
        """1-based line of the deepest node on ``loc`` that exists."""
        node = self.node
        best = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(
                    ((k, v) for k, v in node.value if getattr(k, "value", None) == part), None
                )
                if match is None:
                    break
                key, node = match
                best = key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                best = node.start_mark.line + 1
            else:
                break
        return best

    def text_line(self, loc: tuple[str | int, ...], line_in_text: int | None) -> int | None:
        """File line of line ``line_in_text`` (1-based) of the text value at ``loc`` (e.g. a
        segment's ``sql: |`` block); the field's line when ``line_in_text`` is None."""
        node = self.node
        for part in loc:
            if not isinstance(node, yaml.MappingNode):
                return self.line(loc)
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if node is None:
                return self.line(loc)
        if not line_in_text or not isinstance(node, yaml.ScalarNode):
            return self.line(loc)
        first = node.start_mark.line + 1
        if node.style in ("|", ">"):
            first += 1  # the text starts on the line after the block indicator
            if node.style == "|":
                return first + line_in_text - 1
        return first  # folded or one-line text: its lines are not the file's lines

    def text_location(self, loc: tuple[str | int, ...], line_in_text: int | None) -> Location:
        return Location(
            self.display, self.text_line(loc, line_in_text), ".".join(str(p) for p in loc) or None
        )

    def location(self, loc: tuple[str | int, ...] = (), field: str | None = None) -> Location:
        dotted = field if field is not None else ".".join(str(p) for p in loc) or None
        return Location(self.display, self.line(loc), dotted)

    def error(self, message: str, loc: tuple[str | int, ...] = ()) -> ConfigError:
        return ConfigError(message, self.location(loc))


#: a workspace file is small; more values than this means an alias bomb
MAX_VALUES = 100_000
#: nor is it deep: this is far more than any format needs, and far from Python's stack limit
MAX_DEPTH = 50
#: bytes; a bigger file is refused unread
MAX_FILE_BYTES = 256 << 10


#: the plain data YAML tags; anything else (``!!python/...``, ``!custom``) is refused
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
}
#: unquoted keys YAML 1.1 reads as booleans that are kept as text (not true/false)
_WORD_KEYS = {"on", "off", "yes", "no", "y", "n"}
_TIMESTAMP, _MERGE = "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge"


class _Builder:
    """Plain data from a composed node tree: duplicate keys, non-text keys, self-referencing
    aliases and alias bombs are errors that name their line."""

    def __init__(self, display: str):
        self.display = display
        self.loader = yaml.SafeLoader("")
        self.count = 0
        self.active: set[int] = set()

    def error(self, message: str, node: yaml.Node, path: tuple[Any, ...]) -> ConfigError:
        field = ".".join(str(p) for p in path) or None
        return ConfigError(message, Location(self.display, node.start_mark.line + 1, field))

    def build(self, node: yaml.Node, path: tuple[Any, ...] = ()) -> Any:
        if len(path) > MAX_DEPTH:
            raise self.error(
                f"values are nested more than {MAX_DEPTH} levels deep; flatten them", node, path[:1]
            )
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.error(
                f"the file expands to more than {MAX_VALUES:,} values (YAML aliases?); "
                "write the values out instead of repeating anchors",
                node,
                path[:1],
            )
        if node.tag == _TIMESTAMP:
            return node.value  # no field wants a datetime: `name: 2024-06-01` is text
        if node.tag not in _PLAIN_TAGS:
            raise self.error(f"unsupported YAML tag {node.tag!r}; remove it", node, path)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            raise self.error("a YAML alias refers to its own anchor; remove the loop", node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    raise self.error(
                        "YAML merge keys (<<) are not supported; write the fields out",
                        key_node,
                        path,
                    )
                key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
                if isinstance(key, bool) and key_node.style is None:
                    # YAML 1.1 reads `on:` / `yes:` as booleans; as keys they are words
                    # (`notify: {on: [failed]}`), as in GitHub Actions' `on:`
                    key = key_node.value if key_node.value.lower() in _WORD_KEYS else key
                if not isinstance(key, str):
                    if not isinstance(key_node, yaml.ScalarNode):
                        shown = "a list or mapping"
                    else:  # `null:`, `~:`, `? null`: YAML's null, shown as written
                        shown = "null" if key is None else repr(key)
                    raise self.error(
                        f"a key must be text, but YAML reads this one as {shown}; "
                        "put the key in quotes",
                        key_node,
                        path,
                    )
                if key in out:
                    raise self.error(
                        f"duplicate key {key!r}; keep only one", key_node, (*path, key)
                    )
                out[key] = self.build(value_node, (*path, key))
            return out
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.error(f"malformed YAML: {exc.problem or exc.context}", node, path) from exc
        except (ValueError, TypeError) as exc:  # e.g. `!!int abc`
            raise self.error(f"malformed YAML: {exc}", node, path) from exc


def within(path: Path, root: Path) -> bool:
    """Whether ``path`` is a regular file inside ``root`` once every link is followed: a
    workspace file (or template) linked to ``/proc/self/environ`` or ``~/.aws/credentials``
    is not one."""
    try:
        real = path.resolve(strict=True)
        return real.is_relative_to(root.resolve(strict=True)) and real.is_file()
    except (OSError, RuntimeError):  # a missing file, a loop of links
        return False


def load(path: Path, root: Path) -> YamlDoc:
    try:
        display = str(path.relative_to(root))
    except ValueError:
        display = str(path)
    try:
        st = path.stat()
    except OSError as exc:  # a link to nothing: the file it stood for is not read
        raise ConfigError(
            f"cannot read file: {exc.strerror} (a link to a file that does not exist?)",
            Location(display),
        ) from exc
    if not stat.S_ISREG(st.st_mode):  # a pipe would block the read, a device never end
        raise ConfigError(
            "file is not a regular file (a pipe, a device or a socket); workspace files are "
            "plain YAML files",
            Location(display),
        )
    if not within(path, root):
        raise ConfigError(
            "file is a link to somewhere outside the workspace, or not a regular file; "
            "workspace files must be inside it (a PR could otherwise make plan read any "
            "file of the CI runner)",
            Location(display),
        )
    try:
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"file is larger than {MAX_FILE_BYTES >> 10} KB; a workspace file is small "
                "configuration, not data",
                Location(display),
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", Location(display)) from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError("file is not UTF-8 text", Location(display, line)) from exc
    _check_flow_depth(text, display)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _Builder(display).build(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"malformed YAML: {problem}", Location(display, at)) from exc
    except yaml.reader.ReaderError as exc:  # a control character, or a BOM in the middle
        at = text[: exc.position].count("\n") + 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(
            f"malformed YAML: the file holds a control character ({what}) that YAML does not "
            "allow; remove it",
            Location(display, at),
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", Location(display)) from exc
    except RecursionError as exc:
        raise ConfigError(
            f"malformed YAML: values are nested more than {MAX_DEPTH} levels deep; flatten them",
            Location(display),
        ) from exc
    return YamlDoc(path, display, data, node)


_BRACKETS = re.compile(r"[\[\]{}]")


def _check_flow_depth(text: str, display: str) -> None:
    """Refuse ``[[[[...`` before PyYAML sees it: its scanner is quadratic in flow depth and
    its composer recursive. Brackets inside quotes count too; only a text with more than
    ``2 * MAX_DEPTH`` unclosed brackets is refused."""
    depth = 0
    for m in _BRACKETS.finditer(text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        if depth > 2 * MAX_DEPTH:
            line = text.count("\n", 0, m.start()) + 1
            raise ConfigError(
                f"malformed YAML: values are nested more than {MAX_DEPTH} levels deep; "
                "flatten them",
                Location(display, line),
            )


def validation_errors(
    doc: YamlDoc, exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[ConfigError]:
    """One ConfigError per field pydantic refused, with its file, line and field; ``prefix``
    places a nested model's errors (e.g. an integration's ``config:`` block). The alternatives
    of a union (``existing: <name> | {A: .., B: ..}``) are merged into one message."""
    merged: dict[tuple[str | int, ...], list[str]] = {}
    got: dict[tuple[str | int, ...], str] = {}
    for err in exc.errors(include_url=False):
        loc = prefix + _data_loc(doc.data, prefix, err["loc"])
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown field (not part of the format; check the spelling)"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "union_tag_invalid":
            loc += (str(ctx.get("discriminator", "type")).strip("'"),)
            msg = f"unknown value {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
            loc += tuple(getattr(ctx.get("error"), "loc", ()))
        else:
            shown = _shown(err.get("input"), loc)
            if shown:
                got.setdefault(loc, shown)
            if kind == "string_type" and isinstance(err.get("input"), bool):
                # YAML 1.1: an unquoted NO (Norway), yes, on, off, y, n is a boolean
                msg += '; YAML reads an unquoted no, yes, on, off as true/false: quote it ("NO")'
        msgs = merged.setdefault(loc, [])
        if msg not in msgs:
            msgs.append(msg)
    errors = []
    for loc, msgs in merged.items():
        msg = _join(msgs) + (f" (got {got[loc]})" if loc in got else "")
        errors.append(ConfigError(msg, doc.location(loc)))
    return errors


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|duckdb|postgres|embedded|[a-z_]+\[.*\])$")
_SECRET_FIELDS = {"credentials", "endpoint", "dsn"}


def _data_loc(
    data: Any, prefix: tuple[str | int, ...], loc: tuple[str | int, ...]
) -> tuple[str | int, ...]:
    """``loc`` without the union member tags pydantic inserts (``str``, ``duckdb``,
    ``dict[...]``), told apart from real keys by walking the data."""
    node = data
    for part in prefix:
        node = node.get(part) if isinstance(node, dict) else None
    out: list[str | int] = []
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
            node = node[part]
        elif isinstance(part, str) and _UNION_TAG.match(part):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _shown(value: Any, loc: tuple[str | int, ...]) -> str | None:
    """The offending value for a message; never anything that may hold a secret."""
    if any(p in _SECRET_FIELDS for p in loc):
        return None
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str) and len(value) <= 60:
        return repr(value)
    return None


def _join(msgs: list[str]) -> str:
    lead = "Input should be "
    if len(msgs) > 1 and all(m.startswith(lead) for m in msgs):
        return lead + " or ".join(m[len(lead) :] for m in msgs)
    return "; ".join(msgs)
