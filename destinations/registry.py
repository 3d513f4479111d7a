"""Find destination adapters by ``type`` through the ``reconciler.destinations`` entry points."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from destinations.base import DestinationFactory
from reconciler.errors import ConfigError

GROUP = "reconciler.destinations"


@cache
def available() -> dict[str, DestinationFactory]:
    """Every installed adapter, by type name."""
    found: dict[str, DestinationFactory] = {}
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.load()
    return found


def load(type_name: str) -> DestinationFactory:
    adapters = available()
    if type_name not in adapters:
        known = ", ".join(sorted(adapters)) or "none installed"
        raise ConfigError(f"unknown destination type {type_name!r}; available: {known}")
    return adapters[type_name]
