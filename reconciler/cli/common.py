"""What every command shares: the context object and the single error handler."""

from __future__ import annotations

import os
import re
import sys
from functools import wraps
from pathlib import Path

import click
import duckdb

from reconciler.errors import ReconcileError
from reconciler.workspace.loader import Workspace, find_root
from reconciler.workspace.loader import load as load_workspace


class Ctx:
    def __init__(self, directory: str | None, color: bool):
        self.directory = Path(directory) if directory else Path.cwd()
        self.color = color

    def workspace(self) -> Workspace:
        return load_workspace(find_root(self.directory))


def handle_errors(fn):
    """The single error handler: `Error: ...` on stderr, exit 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReconcileError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except duckdb.Error as exc:  # one we did not expect: still one paragraph, exit 1
            detail = re.sub(r"\s+", " ", str(exc)).strip()
            click.echo(
                f"Error: the database engine failed: {detail}. Nothing more was done; if it "
                "happens again, report it with the command you ran",
                err=True,
            )
            sys.exit(1)

    return wrapper


def use_color(no_color: bool) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
