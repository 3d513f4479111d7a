"""What a sandboxed template may call — plain-data methods of strings, lists and dicts and a
list of filters — and the checks that size a value *before* a call builds it (``'x'.ljust(n)``,
``replace``, ``join``, ``'%*d'``, ``'{:>n}'.format``, sized filter arguments), so no huge
string is ever allocated. Used by :class:`reconciler.workspace.template_sandbox.BoundedSandbox`."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterator
from typing import Any

from reconciler.workspace.template_budget import Budget, current_budget, weight


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
METHODS: dict[type, frozenset[str]] = {
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
FILTERS = _words(
    "abs attr batch capitalize center count d default dictsort e escape first float "
    "forceescape format groupby int items join last length list lower map max min reject "
    "rejectattr replace reverse round safe select selectattr slice sort string striptags sum "
    "title tojson trim truncate unique upper urlencode wordcount indent filesizeformat"
)
#: filters whose number arguments are sizes of what they build
_SIZED_FILTERS = _words("center batch slice indent truncate")

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_percent(b: Budget, fmt: str, args: Any) -> None:
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


def check_str_format(b: Budget, fmt: str, args: tuple, kwargs: dict) -> None:
    """``'{:>1000000000}'.format(1)`` and nested ``'{:{}}'`` widths."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format() itself says what is wrong
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:  # a width or precision taken from an argument: size them all
            for n in _numbers((*args, *kwargs.values())):
                b.size(n)
        for digits in re.findall(r"\d+", spec):
            b.size(int(digits))


def _numbers(values: Any, depth: int = 0) -> Iterator[int]:
    """Every number a nested format field could read from ``values``: ints, digit strings
    (``'{0:{1}}'.format('x', '1000000000')``) and those inside lists and dicts
    (``{1[0]}``), a few levels deep."""
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            yield abs(v)
        elif isinstance(v, str):
            digits = v.strip().lstrip("+-")
            if digits.isdigit() and len(digits) < 20:
                yield int(digits)
        elif depth < 3 and isinstance(v, list | tuple | set | frozenset):
            yield from _numbers(v, depth + 1)
        elif depth < 3 and isinstance(v, dict):
            yield from _numbers((*v.keys(), *v.values()), depth + 1)


def checked_str_method(s: str, name: str, method: Callable) -> Callable:
    def checked(*args: Any, **kwargs: Any) -> Any:
        b = current_budget()
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


def _check_replace(b: Budget, s: Any, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(old, str) and isinstance(new, str)):
        return
    text = str(s)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    b.size(len(text) + hits * (len(new) - len(old)))


def _check_join(b: Budget, sep: Any, items: list) -> None:
    b.size(weight(items, b.limits.value) + len(str(sep)) * max(len(items) - 1, 0))


def guard_filter(name: str, func: Callable) -> Callable:
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = current_budget()
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
            check_percent(b, user[0], kwargs or tuple(user[1:]))
        elif name == "indent" and user:
            width = user[1] if len(user) > 1 else kwargs.get("width", 4)
            each = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            b.size(len(str(user[0])) * (1 + max(each, 0)))
        return b.add(func(*args, **kwargs))

    return guarded
