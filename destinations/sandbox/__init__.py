"""The local ``sandbox`` destination (see :mod:`destinations.sandbox.adapter`)."""

from destinations.sandbox.adapter import SandboxDestination
from destinations.sandbox.config import SandboxConfig
from destinations.sandbox.store import SandboxStore, open_store

__all__ = ["SandboxConfig", "SandboxDestination", "SandboxStore", "open_store"]
