"""The bounded Jinja sandbox every user template renders in (segment SQL, audience names).

Templates come from pull requests, so besides Jinja's sandbox (no ``__class__`` tricks, no
mutation of lists and dicts) every render has a budget, enforced for the whole render and not
per operator:

- a deadline, checked at every loop iteration, call, filter, operator and output chunk;
- a size limit on every value the template builds (strings, lists, numbers), checked *before*
  the value is built where its size can be known (``'x'.ljust(n)``, ``s * n``, ``a ~ b``,
  ``'%*d'``, ``join``, ``replace``), so no 1 GB string is ever allocated;
- a limit on everything built in one render, on loop iterations and on the rendered output
  (also output captured by macros and ``{% set %}`` blocks).

Only plain-data methods of strings, lists and dicts are callable, only a list of filters is
available, and ``lipsum``, ``cycler``, ``joiner`` and ``namespace`` are gone.
Everything raises :class:`TemplateFailed`; the caller adds the file and field.

This module is the environment and :func:`render`; the limits and the render's budget are
:mod:`reconciler.workspace.template_budget`, what may be called and the size checks before a
call :mod:`reconciler.workspace.template_checks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from reconciler.workspace.template_budget import (
    BUDGET,
    LIMITS,
    Budget,
    Limits,
    TemplateFailed,
    current_budget,
    too_much_output,
    weight,
)
from reconciler.workspace.template_checks import (
    FILTERS,
    METHODS,
    check_percent,
    check_str_format,
    checked_str_method,
    guard_filter,
)


# ---------------------------------------------------------------------- the environment
class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every loop, ``~`` and list/tuple/dict literal routed
    through the budget."""

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        guarded = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None
        )
        guarded.set_lineno(node.lineno)
        node = nodes.For(  # type: ignore[assignment]
            node.target, guarded, node.body, node.else_, node.test, node.recursive
        ).set_lineno(node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _bounded(self, visit: Callable, node: nodes.Node, frame: Any) -> None:
        self.write("environment.bounded_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Any) -> None:
        self._bounded(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Any) -> None:
        self._bounded(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Any) -> None:
        if node.ctx == "load":
            self._bounded(super().visit_Tuple, node, frame)
        else:
            super().visit_Tuple(node, frame)


#: how Python prints an object it knows nothing about: its memory address, new every run
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable(value: Any) -> Any:
    """What ``{{ ... }}`` prints, refused when its text would differ from run to run: a
    function or method (``{{ range }}``, ``{{ dict().items }}``) prints its address, so an
    audience name made of it would be renamed by every plan."""
    if isinstance(value, Undefined):  # jinja's own error says which name is undefined
        return value
    if callable(value) or _ADDRESS.search(str(value)):
        raise TemplateFailed(
            f"the template prints a {type(value).__name__}, whose text changes from run to "
            "run (a function or method, not its result: add the call's parentheses)"
        )
    return value


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *, autoescape: bool = False) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            finalize=stable,
        )
        for name in ("lipsum", "cycler", "joiner", "namespace"):
            self.globals.pop(name, None)
        self.filters = {n: guard_filter(n, f) for n, f in self.filters.items() if n in FILTERS}
        self.concat = self._bounded_join  # type: ignore[method-assign]  # macro/set capture

    # -- attribute access: only plain-data methods, the sizing ones checked
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if callable(value):
            for kind, allowed in METHODS.items():
                if isinstance(obj, kind):
                    return attr in allowed
        return True

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._checked(obj, attribute, super().getattr(obj, attribute))

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # refused at once: the sandbox's undefined value printed as "[Undefined]" inside a
        # list (`segments|map(attribute="__class__")|list` named an audience so)
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        return self._checked(obj, argument, value) if isinstance(argument, str) else value

    def _checked(self, obj: Any, name: str, value: Any) -> Any:
        if isinstance(obj, str):
            text: str = obj
            if getattr(value, "__self__", None) is obj:
                return checked_str_method(text, name, value)
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        inner = super().wrap_str_format(value)
        if inner is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], dict) else kwargs
            check_str_format(current_budget(), fmt, () if is_map else args, mapping)
            return inner(*args, **kwargs)

        return checked

    # -- operators, calls, loops, concatenation, captured output
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = current_budget()
        b.tick()
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            if abs(right) > 64 and abs(left) > 1:
                raise TemplateFailed(f"exponent {right} is too large in a template")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and (left.bit_length() * right > 4 * b.limits.value)
            ):
                raise TemplateFailed("a number is too large in a template")
        elif operator == "*":
            if ints and left.bit_length() + right.bit_length() > 4 * b.limits.value:
                raise TemplateFailed("a number is too large in a template")
            for seq, n in ((left, right), (right, left)):
                repeated = isinstance(seq, str | list | tuple) and isinstance(n, int) and n > 0
                if repeated and weight(seq, b.limits.value) * n > b.limits.value:
                    raise TemplateFailed(
                        "a repeated string or list is too long in a template (more than "
                        f"{b.limits.value:,} characters or items)"
                    )
        elif operator == "+" and isinstance(left, str | list | tuple):
            b.size(weight(left, b.limits.value) + weight(right, b.limits.value))
        elif operator == "%" and isinstance(left, str):
            check_percent(b, left, right)
        return b.add(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        b = current_budget()
        b.tick()
        return b.add(super().call(__context, __obj, *args, **kwargs))

    def bounded_iter(self, iterable: Iterable) -> Iterator:
        b = current_budget()
        for item in iterable:
            b.iterate()
            yield item

    def bounded_concat(self, values: tuple) -> str:
        b = current_budget()
        parts = [str(v) for v in values]
        b.size(sum(len(p) for p in parts))
        return b.add("".join(parts))

    def bounded_value(self, value: Any) -> Any:
        return current_budget().add(value)

    def _bounded_join(self, parts: Iterable[str]) -> str:
        b = current_budget()
        parts = list(parts)
        if sum(len(p) for p in parts) > b.limits.output:
            raise too_much_output(b.limits)
        joined = "".join(parts)
        b.built += len(joined)
        b.tick()
        return joined


ENV = BoundedSandbox()
HTML_ENV = BoundedSandbox(autoescape=True)


def render(
    source: str, context: dict[str, Any], limits: Limits = LIMITS, *, html: bool = False
) -> str:
    """Render ``source`` within ``limits``: streamed chunk by chunk, counting what it outputs.
    ``html`` escapes every value (HTML e-mail)."""
    budget = Budget(limits)
    token = BUDGET.set(budget)
    try:
        if len(source) > limits.output:
            raise TemplateFailed(f"the template is longer than {limits.output:,} characters")
        chunks = (HTML_ENV if html else ENV).from_string(source).generate(context)
        out: list[str] = []
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > limits.output:
                    raise too_much_output(limits)
                budget.tick()
                out.append(chunk)
        finally:
            chunks.close()  # type: ignore[attr-defined]
        return "".join(out)
    finally:
        BUDGET.reset(token)
