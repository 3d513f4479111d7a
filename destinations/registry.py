"""Find destination adapters by ``type`` through the ``reconciler.destinations`` entry points.

Adapters load lazily, one at a time: a command imports only the adapters of the integrations
it uses, so one broken or slow-to-import adapter does not break the others."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from destinations.base import DestinationFactory
from reconciler.errors import ConfigError

GROUP = "reconciler.destinations"
#: the distribution the built-in adapters come with
DISTRIBUTION = "activation-reconciler"


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", "") or ""
    return name.lower().replace("_", "-")


def installed() -> list[str]:
    """The type names of every installed adapter (nothing is imported)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@cache
def load(type_name: str) -> DestinationFactory:
    """The adapter class of ``type_name``, imported now; a clear error when it is not
    installed or cannot be imported."""
    found: list[EntryPoint] = [ep for ep in entry_points(group=GROUP) if ep.name == type_name]
    if not found:
        known = ", ".join(installed()) or "none installed"
        raise ConfigError(f"unknown destination type {type_name!r}; available: {known}")
    # a type this package ships is its own: another distribution registering the same name
    # (whose adapter would get the integration's credentials) never takes it over
    ours = [ep for ep in found if _distribution(ep) == DISTRIBUTION]
    chosen = (ours or found)[0]
    try:
        factory = chosen.load()
    except Exception as exc:  # a broken adapter: say which, and keep the others usable
        raise ConfigError(
            f"the destination type {type_name!r} ({chosen.value}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}; reinstall it or remove the integrations that use it"
        ) from exc
    if not all(hasattr(factory, a) for a in ("config_model", "credentials_model")):
        raise ConfigError(
            f"the destination type {type_name!r} ({chosen.value}) is not a destination "
            "adapter (it has no config_model and credentials_model); fix or remove the "
            "package that registers it"
        )
    return factory
