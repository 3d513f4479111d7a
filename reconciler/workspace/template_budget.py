"""What one template render may use and what it has used so far: the :class:`Limits`, the
budget of the render in progress (a context variable the sandbox's checks read), the weight
of a value, and :class:`TemplateFailed`, which every refusal raises. The accounting side of
:mod:`reconciler.workspace.template_sandbox`."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


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
BUDGET: ContextVar[Budget] = ContextVar("template_budget")


class Budget:
    """The render in progress: its deadline, and what it built and looped so far."""

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

    def iterate(self) -> None:
        """Account for one more loop iteration; refuse it past the render's limit."""
        self.iterations += 1
        if self.iterations > self.limits.iterations:
            raise TemplateFailed(
                f"the template's loops run more than {self.limits.iterations:,} times in all; "
                "simplify it"
            )
        self.tick()

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


def current_budget() -> Budget:
    return BUDGET.get()


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


def too_much_output(limits: Limits) -> TemplateFailed:
    return TemplateFailed(f"the template renders more than {limits.output:,} characters")
