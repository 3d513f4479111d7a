"""The audiences a webhook integration created, remembered in a small local JSON file.

A receiver keeps the members; it is not asked to list audiences. So that ``reconcile lists``,
``list: {existing: ...}`` and the recovery of an interrupted creation work, the adapter keeps
``.reconcile/webhook-<integration>.json`` (``registry_path``)::

    {"version": 1, "audiences": [{"id": "aud_...", "name": "VIP", "creation_key": "...",
                                  "created_at": "2026-01-02T03:04:05+00:00"}]}

It holds names and ids only (no members, no personal data) and is replaced atomically
(written to a temporary file, then renamed), so a crash leaves the old or the new file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import ConfigError

__all__ = ["AudienceRegistry", "Entry"]

VERSION = 1


@dataclass(frozen=True)
class Entry:
    id: str
    name: str
    creation_key: str
    created_at: str


class AudienceRegistry:
    """Read on every call (it is small), written only when an audience is created."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        """Every audience, oldest first; none when the file does not exist yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"cannot read the webhook audience registry {self.path}: {exc}"
            ) from None
        try:
            data = json.loads(text)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            return [
                Entry(str(a["id"]), str(a["name"]), str(a["creation_key"]), str(a["created_at"]))
                for a in data["audiences"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"the webhook audience registry {self.path} is damaged ({exc}); restore it "
                "from version control or a backup"
            ) from None

    def by_id(self, audience_id: str) -> Entry | None:
        return next((e for e in self.entries() if e.id == audience_id), None)

    def by_key(self, creation_key: str) -> Entry | None:
        return next((e for e in self.entries() if e.creation_key == creation_key), None)

    def newest_named(self, name: str) -> Entry | None:
        return next((e for e in reversed(self.entries()) if e.name == name), None)

    def add(self, audience_id: str, name: str, creation_key: str) -> Entry:
        """Remember one audience (once: an id already known is returned as it is)."""
        entries = self.entries()
        for known in entries:
            if known.id == audience_id:
                return known
        entry = Entry(audience_id, name, creation_key, datetime.now(UTC).isoformat())
        self._write([*entries, entry])
        return entry

    def _write(self, entries: list[Entry]) -> None:
        data = {"version": VERSION, "audiences": [asdict(e) for e in entries]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
