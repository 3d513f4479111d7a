"""YAML files with their line numbers: every error can name ``file:line: field``.

PyYAML composes a node tree (which keeps marks) and we build plain data from it ourselves,
so duplicate keys are errors (PyYAML would keep the last silently) and a pydantic error
location such as ``("list", "existing")`` maps back to the line that holds it.
"""

from __future__ import annotations

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

    def location(self, loc: tuple[str | int, ...] = (), field: str | None = None) -> Location:
        dotted = field if field is not None else ".".join(str(p) for p in loc) or None
        return Location(self.display, self.line(loc), dotted)

    def error(self, message: str, loc: tuple[str | int, ...] = ()) -> ConfigError:
        return ConfigError(message, self.location(loc))


def _construct(node: yaml.Node, display: str) -> Any:
    loader = yaml.SafeLoader("")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}",
                    Location(display, key_node.start_mark.line + 1, str(key)),
                )
            out[key] = _construct(value_node, display)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, display) for v in node.value]
    return loader.construct_object(node, deep=True)


def load(path: Path, root: Path) -> YamlDoc:
    try:
        display = str(path.relative_to(root))
    except ValueError:
        display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", Location(display)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not UTF-8 text", Location(display)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"malformed YAML: {problem}", Location(display, line)) from exc
    data = _construct(node, display) if node is not None else None
    return YamlDoc(path, display, data, node)


def validation_errors(
    doc: YamlDoc, exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[ConfigError]:
    """One ConfigError per pydantic error, each with its file, line and field; ``prefix``
    places a nested model's errors (e.g. an integration's ``config:`` block)."""
    errors = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the format; check the spelling)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        errors.append(ConfigError(msg, doc.location(loc)))
    return errors


def _is_union_tag(part: str | int) -> bool:
    # pydantic puts union member / discriminator tags such as "duckdb" or "str" into the loc
    return isinstance(part, str) and part in {"duckdb", "postgres", "str", "dict[str,str]"}
