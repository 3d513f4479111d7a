"""`reconcile` commands: thin click wrappers around the engine."""

from reconciler.cli.main import main

__all__ = ["main"]
