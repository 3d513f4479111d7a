"""`reconcile` commands: thin click wrappers around the engine.

``main`` is the console entry point. It imports the commands inside the error handling, so
Ctrl-C or a failure while the program starts is one `Error: ...` line and exit 1 too, never a
traceback. (Tests and embedders use the click group, ``reconciler.cli.main.main``.)
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from reconciler.cli.main import main as group
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(1)
    group()


#: ``main`` under a name the submodule ``reconciler.cli.main`` cannot shadow: once that module
#: is imported, the package attribute ``main`` is the module (``python -m reconciler`` in a
#: process that imported the commands before, as the profilers in ``benchmarks/`` do)
entry = main

__all__ = ["entry", "main"]
