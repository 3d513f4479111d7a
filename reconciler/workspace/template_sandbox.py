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
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateFailed(Exception):
    """A template did not render; the caller adds the file and field. ``line`` is the line
    within the template, when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Limits:
    """What one render may use. ``clock`` is injectable so tests need not wait."""

    seconds: float = 2.0
    #: characters a template may render (also what a macro or set block captures)
    output: int = 1_000_000
    #: size of any one value: characters of a string, items of a list, digits of a number
    value: int = 100_000
    #: all values built in one render, added up
    built: int = 10_000_000
    #: loop iterations in one render, all loops together
    iterations: int = 1_000_000
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


LIMITS = Limits()
_BUDGET: ContextVar[_Budget] = ContextVar("template_budget")


class _Budget:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.deadline = limits.clock() + limits.seconds
        self.built = 0
        self.iterations = 0

    def tick(self) -> None:
        if self.limits.clock() > self.deadline:
            raise TemplateFailed(
                f"the template takes longer than {self.limits.seconds:g} seconds to render; "
                "simplify it"
            )

    def size(self, n: int) -> None:
        """Refuse a value of ``n`` characters or items before it is built."""
        if n > self.limits.value:
            raise TemplateFailed(
                f"a value in the template is too large (more than {self.limits.value:,} "
                "characters or items)"
            )

    def add(self, value: Any) -> Any:
        """Account for a value the template built; refuse it when it is too large."""
        n = weight(value, self.limits.value)
        self.size(n)
        self.built += n
        if self.built > self.limits.built:
            raise TemplateFailed(
                f"the template builds more than {self.limits.built:,} characters or items in "
                "all; simplify it"
            )
        self.tick()
        return value


def _budget() -> _Budget:
    return _BUDGET.get()


def weight(value: Any, limit: int) -> int:
    """Characters / items / digits in ``value``, counted through containers; stops counting
    as soon as it passes ``limit`` (so it costs at most ``limit`` steps)."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str | bytes | range):
            total += len(v)
        elif isinstance(v, bool) or v is None:
            total += 1
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, dict):
            total += len(v)
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += len(v)
            if total <= limit:
                stack.extend(v)
        else:
            total += 1
        if total > limit:
            return total
    return total


# ---------------------------------------------------------------------- what may be called
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STR_METHODS = _words(
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit "
    "isidentifier islower isnumeric isprintable isspace istitle isupper lower lstrip partition "
    "removeprefix removesuffix rfind rindex rpartition rsplit rstrip split splitlines "
    "startswith strip swapcase title upper center ljust rjust zfill replace join format "
    "format_map unescape striptags"
)
_METHODS: dict[type, frozenset[str]] = {
    str: _STR_METHODS,
    list: frozenset({"index", "count", "copy"}),
    tuple: frozenset({"index", "count"}),
    dict: frozenset({"get", "items", "keys", "values", "copy"}),
    range: frozenset({"index", "count"}),
    int: frozenset({"bit_length", "is_integer"}),
    float: frozenset({"is_integer"}),
    set: frozenset({"issubset", "issuperset", "isdisjoint", "copy"}),
    frozenset: frozenset({"issubset", "issuperset", "isdisjoint", "copy"}),
    bytes: frozenset({"decode"}),
}

#: filters a template may use (Jinja's others are left out: random output, unbounded output)
_FILTERS = _words(
    "abs attr batch capitalize center count d default dictsort e escape first float "
    "forceescape format groupby int items join last length list lower map max min reject "
    "rejectattr replace reverse round safe select selectattr slice sort string striptags sum "
    "title tojson trim truncate unique upper urlencode wordcount indent filesizeformat"
)
#: filters whose number arguments are sizes of what they build
_SIZED_FILTERS = _words("center batch slice indent truncate")

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(b: _Budget, fmt: str, args: Any) -> None:
    """``'%*d' % (10**9, 1)`` and ``'%1000000000d'`` would build huge strings."""
    values = args if isinstance(args, tuple) else (args,)
    for m in _PERCENT.finditer(fmt):
        for part in m.groups():
            if part == "*":
                for v in values:
                    if isinstance(v, int):
                        b.size(abs(v))
            elif part:
                b.size(int(part))


def _check_str_format(b: _Budget, fmt: str, args: tuple, kwargs: dict) -> None:
    """``'{:>1000000000}'.format(1)`` and nested ``'{:{}}'`` widths."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format() itself says what is wrong
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            for v in (*args, *kwargs.values()):
                if isinstance(v, int):
                    b.size(abs(v))
        for digits in re.findall(r"\d+", spec):
            b.size(int(digits))


def _checked_str_method(s: str, name: str, method: Callable) -> Callable:
    def checked(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
            b.size(args[0])
        elif name == "replace" and len(args) >= 2:
            _check_replace(b, s, args[0], args[1], args[2] if len(args) > 2 else -1)
        elif name == "join" and args:
            items = list(args[0])
            _check_join(b, s, items)
            args = (items, *args[1:])
        return method(*args, **kwargs)

    return checked


def _check_replace(b: _Budget, s: Any, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(old, str) and isinstance(new, str)):
        return
    text = str(s)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    b.size(len(text) + hits * (len(new) - len(old)))


def _check_join(b: _Budget, sep: Any, items: list) -> None:
    b.size(weight(items, b.limits.value) + len(str(sep)) * max(len(items) - 1, 0))


def _guard_filter(name: str, func: Callable) -> Callable:
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        user = args[skip:]
        if name in _SIZED_FILTERS:
            for v in (*user[1:], *kwargs.values()):
                if isinstance(v, int):
                    b.size(abs(v))
        if name == "join" and user:
            items = list(user[0])
            _check_join(b, user[1] if len(user) > 1 else kwargs.get("d", ""), items)
            args = (*args[:skip], items, *user[1:])
        elif name == "replace" and len(user) >= 3:
            count = user[3] if len(user) > 3 else kwargs.get("count")
            _check_replace(b, user[0], user[1], user[2], count if count is not None else -1)
        elif name == "format" and user and isinstance(user[0], str):
            _check_percent(b, user[0], kwargs or tuple(user[1:]))
        elif name == "indent" and user:
            width = user[1] if len(user) > 1 else kwargs.get("width", 4)
            each = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            b.size(len(str(user[0])) * (1 + max(each, 0)))
        return b.add(func(*args, **kwargs))

    return guarded


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


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *, autoescape: bool = False) -> None:
        super().__init__(
            undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True
        )
        for name in ("lipsum", "cycler", "joiner", "namespace"):
            self.globals.pop(name, None)
        self.filters = {n: _guard_filter(n, f) for n, f in self.filters.items() if n in _FILTERS}
        self.concat = self._bounded_join  # type: ignore[method-assign]  # macro/set capture

    # -- attribute access: only plain-data methods, the sizing ones checked
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if callable(value):
            for kind, allowed in _METHODS.items():
                if isinstance(obj, kind):
                    return attr in allowed
        return True

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._checked(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        return self._checked(obj, argument, value) if isinstance(argument, str) else value

    def _checked(self, obj: Any, name: str, value: Any) -> Any:
        if isinstance(obj, str):
            text: str = obj
            if getattr(value, "__self__", None) is obj:
                return _checked_str_method(text, name, value)
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        inner = super().wrap_str_format(value)
        if inner is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], dict) else kwargs
            _check_str_format(_budget(), fmt, () if is_map else args, mapping)
            return inner(*args, **kwargs)

        return checked

    # -- operators, calls, loops, concatenation, captured output
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
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
            _check_percent(b, left, right)
        return b.add(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        b = _budget()
        b.tick()
        return b.add(super().call(__context, __obj, *args, **kwargs))

    def bounded_iter(self, iterable: Iterable) -> Iterator:
        b = _budget()
        for item in iterable:
            b.iterations += 1
            if b.iterations > b.limits.iterations:
                raise TemplateFailed(
                    f"the template's loops run more than {b.limits.iterations:,} times in all; "
                    "simplify it"
                )
            b.tick()
            yield item

    def bounded_concat(self, values: tuple) -> str:
        b = _budget()
        parts = [str(v) for v in values]
        b.size(sum(len(p) for p in parts))
        return b.add("".join(parts))

    def bounded_value(self, value: Any) -> Any:
        return _budget().add(value)

    def _bounded_join(self, parts: Iterable[str]) -> str:
        b = _budget()
        parts = list(parts)
        if sum(len(p) for p in parts) > b.limits.output:
            raise _too_much_output(b.limits)
        joined = "".join(parts)
        b.built += len(joined)
        b.tick()
        return joined


def _too_much_output(limits: Limits) -> TemplateFailed:
    return TemplateFailed(f"the template renders more than {limits.output:,} characters")


ENV = BoundedSandbox()
HTML_ENV = BoundedSandbox(autoescape=True)


def render(
    source: str, context: dict[str, Any], limits: Limits = LIMITS, *, html: bool = False
) -> str:
    """Render ``source`` within ``limits``: streamed chunk by chunk, counting what it outputs.
    ``html`` escapes every value (HTML e-mail)."""
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
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
                    raise _too_much_output(limits)
                budget.tick()
                out.append(chunk)
        finally:
            chunks.close()  # type: ignore[attr-defined]
        return "".join(out)
    finally:
        _BUDGET.reset(token)
