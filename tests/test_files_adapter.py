"""The `files` adapter on its own: one export written through DuckDB `COPY`, its manifest,
what a failing query leaves behind (nothing), and paths that would leave the location."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from destinations.base import DestinationContext, ExportRequest, FileExport
from destinations.files import FilesDestination
from destinations.files.config import FilesConfig, FilesCredentials
from reconciler.errors import ConfigError, TerminalError

AS_OF = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def make(tmp_path: Path, **config) -> FilesDestination:
    cfg = FilesConfig(**{"location": "out", **config})
    return FilesDestination(cfg, FilesCredentials(), DestinationContext(root=tmp_path), None)


def request(path: str = "vip", kind: str = "delta") -> ExportRequest:
    return ExportRequest("act", path, kind, "20261129T060000Z-00001", AS_OF, ("k", "v"))


def test_writes_the_query_and_its_manifest(tmp_path):
    dest = make(tmp_path, format="parquet")
    assert isinstance(dest, FileExport) and dest.capabilities.export
    con = duckdb.connect()
    done = dest.write_export(con, "SELECT range AS k, range * 2 AS v FROM range(1000)", request())
    path = Path(done.url)
    assert path == tmp_path / "out" / "vip" / "act-20261129T060000Z-00001-delta.parquet"
    assert done.rows == 1000 == con.execute(f"SELECT count(*) FROM '{path}'").fetchone()[0]
    manifest = json.loads(Path(done.manifest).read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == done.sha256
    assert manifest["as_of"] == "2026-11-29T06:00:00+00:00" and manifest["columns"] == ["k", "v"]
    assert sorted(p.name for p in path.parent.iterdir()) == [
        path.name,
        path.name + ".manifest.json",
    ]


def test_a_failing_query_leaves_no_file_at_all(tmp_path):
    dest = make(tmp_path)
    con = duckdb.connect()
    with pytest.raises(TerminalError, match="writing .*act-20261129T060000Z-00001-delta.csv"):
        dest.write_export(con, "SELECT error('boom') AS k", request())
    assert list((tmp_path / "out" / "vip").iterdir()) == []


def test_a_second_write_of_the_same_stamp_replaces_the_file(tmp_path):
    dest = make(tmp_path)
    con = duckdb.connect()
    dest.write_export(con, "SELECT 1 AS k", request())
    done = dest.write_export(con, "SELECT 1 AS k UNION ALL SELECT 2", request())
    assert done.rows == 2
    assert len(list((tmp_path / "out" / "vip").iterdir())) == 2  # one file, one manifest


@pytest.mark.parametrize("path", ["../up", "/abs", "a/../../b", "s3://x/y"])
def test_paths_leaving_the_location_are_refused(tmp_path, path):
    with pytest.raises(ConfigError, match="outside"):
        make(tmp_path).write_export(duckdb.connect(), "SELECT 1", request(path))
    assert not (tmp_path / "up").exists() and not (tmp_path / "out").exists()


def test_a_symbolic_link_out_of_the_location_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "vip").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        make(tmp_path).write_export(duckdb.connect(), "SELECT 1", request())
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_an_fsspec_url_with_the_memory_filesystem(tmp_path):
    import fsspec

    dest = make(tmp_path, location="memory://exports-test")
    done = dest.write_export(duckdb.connect(), "SELECT 7 AS k", request())
    fs = fsspec.filesystem("memory")
    assert done.url == "memory://exports-test/vip/act-20261129T060000Z-00001-delta.csv"
    assert fs.cat_file(done.url) == b"k\n7\n"
    assert json.loads(fs.cat_file(done.manifest))["rows"] == 1
    assert dest.list_audiences()[0].name == "vip"
    assert not list((tmp_path / ".reconcile" / "tmp").iterdir())  # the upload's scratch file
