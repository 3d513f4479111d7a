"""Where export files become visible: a local folder (temporary name, then an atomic rename)
or an fsspec URL (an object store: the finished file is uploaded in one piece — an object
store shows an object only once its upload completed — then its manifest).

Either way a file exists under its final name only when it is complete; the manifest beside
it (``<file>.manifest.json``) is written last, so a reader that waits for the manifest never
reads an export that is still being written."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from destinations.files.config import url_scheme
from reconciler.errors import ConfigError, TerminalError, TransientError

__all__ = ["FsspecStore", "LocalStore", "Store", "open_store"]

TMP_MARK = ".tmp-"


class Store(Protocol):
    def url(self, rel: str) -> str:
        """The final address of ``rel`` (a path below the location)."""
        ...

    def scratch(self, rel: str) -> Path:
        """A local file DuckDB may ``COPY`` to, before :meth:`publish`."""
        ...

    def publish(self, scratch: Path, rel: str) -> None:
        """Make the finished ``scratch`` file visible under ``rel``, all or nothing."""
        ...

    def put_text(self, rel: str, text: str) -> None:
        """Write a small text file under ``rel``, all or nothing."""
        ...

    def folders(self) -> list[str]:
        """The folders directly below the location."""
        ...


#: the longest one request to an object store may take, beyond a second per MB it carries:
#: a store that takes the connection and never answers (a stuck proxy; botocore's read
#: timeout does not cover its wait for ``100 Continue``) would otherwise hold the export for
#: good; the destination's retry policy retries a request that ran out, within its budget
DEADLINE_SECONDS = 130.0


def open_store(
    location: str, root: Path, options: dict[str, Any], deadline: float = DEADLINE_SECONDS
) -> Store:
    """The store of ``location``: a URL through fsspec, else a folder (relative to ``root``).
    ``deadline``: the longest one request to an object store may take (see
    :data:`DEADLINE_SECONDS`)."""
    if url_scheme(location) is not None:
        return FsspecStore(location, root, options, deadline)
    base = Path(location).expanduser()
    return LocalStore(base if base.is_absolute() else root / base)


def _inside(rel: str) -> PurePosixPath:
    """``rel`` as a clean relative path; anything that would leave the location is refused
    (validation refuses it first: this is the second line of defence)."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or ":" in rel or not p.parts:
        raise ConfigError(f"export path {rel!r} is outside the destination's location")
    return p


class LocalStore:
    """Files in a local folder: DuckDB writes ``.<name>.tmp-<id>`` beside the final file, which
    is flushed to disk and renamed over the final name (``os.replace`` is atomic)."""

    def __init__(self, base: Path):
        self.base = base

    def _final(self, rel: str) -> Path:
        path = self.base / _inside(rel)
        base = self.base.resolve()
        real = path.parent.resolve() if path.parent.exists() else path.parent
        if path.parent.exists() and base not in (real, *real.parents):
            raise ConfigError(f"export path {rel!r} leads outside {self.base} (a symbolic link)")
        return path

    def url(self, rel: str) -> str:
        return str(self._final(rel))

    def scratch(self, rel: str) -> Path:
        final = self._final(rel)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create the export folder {final.parent}: {exc}") from exc
        for stale in final.parent.glob(f".{final.name}{TMP_MARK}*"):  # an export that died
            with contextlib.suppress(OSError):
                stale.unlink()
        return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")

    def publish(self, scratch: Path, rel: str) -> None:
        final = self._final(rel)
        _fsync(scratch)
        os.replace(scratch, final)
        _fsync(final.parent)

    def put_text(self, rel: str, text: str) -> None:
        tmp = self.scratch(rel)
        tmp.write_text(text, encoding="utf-8")
        self.publish(tmp, rel)

    def folders(self) -> list[str]:
        if not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if p.is_dir() and p.name[0] != ".")


class FsspecStore:
    """Files at an fsspec URL (``s3://``, ``gs://``, ...): DuckDB writes a local temporary
    file, which is uploaded under its final key in one ``put`` (S3 and GCS show an object
    only when its upload completed), then removed."""

    def __init__(
        self,
        location: str,
        root: Path,
        options: dict[str, Any],
        deadline: float = DEADLINE_SECONDS,
    ):
        import fsspec

        self.location = location.rstrip("/")
        protocol = url_scheme(location) or "file"
        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot open {protocol}:// storage: {exc}") from exc
        self.tmp = root / ".reconcile" / "tmp"
        self.deadline = deadline

    def _bounded(self, size: int) -> dict[str, Any]:
        """The keyword that bounds one request of ``size`` bytes: fsspec's ``timeout`` (only
        its asynchronous filesystems take it: s3, gcs, azure)."""
        if not getattr(self.fs, "async_impl", False):
            return {}
        return {"timeout": self.deadline + size / 1_000_000}

    def url(self, rel: str) -> str:
        return f"{self.location}/{_inside(rel)}"

    def scratch(self, rel: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="export-", suffix=TMP_MARK.strip("-"), dir=self.tmp)
        os.close(fd)
        os.unlink(name)  # DuckDB creates it
        return Path(name)

    def publish(self, scratch: Path, rel: str) -> None:
        try:
            self.fs.put_file(str(scratch), self.url(rel), **self._bounded(_size(scratch)))
        except Exception as exc:  # the store's library raises its own (botocore, aiohttp)
            raise _storage_error(exc, self.url(rel)) from exc
        finally:
            with contextlib.suppress(OSError):
                scratch.unlink()

    def put_text(self, rel: str, text: str) -> None:
        try:
            data = text.encode()
            self.fs.pipe_file(self.url(rel), data, **self._bounded(len(data)))
        except Exception as exc:  # the store's library raises its own (botocore, aiohttp)
            raise _storage_error(exc, self.url(rel)) from exc

    def folders(self) -> list[str]:
        try:
            found = self.fs.ls(self.location, detail=True, **self._bounded(0))
        except FileNotFoundError:
            return []
        except Exception as exc:  # the store's library raises its own (botocore, aiohttp)
            raise _storage_error(exc, self.location) from exc
        return sorted(PurePosixPath(e["name"]).name for e in found if e.get("type") == "directory")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _storage_error(exc: Exception, where: str) -> Exception:
    """Access refused or a missing bucket is terminal; anything else (network, an endpoint
    that does not answer, 5xx) is worth retrying, and is the activation's error, never the
    whole run's."""
    if isinstance(exc, PermissionError):
        return TerminalError(f"the store refused writing {where}: {exc}")
    if isinstance(exc, FileNotFoundError):
        return TerminalError(f"cannot write {where}: the bucket or folder does not exist ({exc})")
    from fsspec.exceptions import FSTimeoutError  # imported already: the store uses fsspec

    if isinstance(exc, FSTimeoutError):  # a request past its deadline
        return TransientError(f"writing {where} failed: the store did not answer in time")
    return TransientError(f"writing {where} failed: {exc}")


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entry list) to disk, where the platform allows it."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
