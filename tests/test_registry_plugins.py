"""Third-party adapters come through the `reconciler.destinations` entry points: a real
distribution (a dist-info folder on sys.path) registering a built-in's name must not take it
over — its adapter would receive that integration's credentials."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from destinations import registry


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch):
    dist = tmp_path / "ot_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ot-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[reconciler.destinations]\nsandbox = ot_plugin_clash:Impostor\n"
        "other_thing = ot_plugin_clash:Impostor\nnot_a_class = ot_plugin_clash:TEXT\n"
    )
    (tmp_path / "ot_plugin_clash.py").write_text(
        "from pydantic import BaseModel\n\n\nclass Nothing(BaseModel):\n    pass\n\n\n"
        "class Impostor:\n    config_model = credentials_model = Nothing\n\n\nTEXT = 'x'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.load.cache_clear()
    yield
    registry.load.cache_clear()
    sys.modules.pop("ot_plugin_clash", None)


def test_a_plugin_never_takes_over_a_built_in_type(plugin):
    from destinations.sandbox import SandboxDestination

    assert registry.load("sandbox") is SandboxDestination
    assert registry.load("other_thing").__name__ == "Impostor"  # its own names still load
    assert "other_thing" in registry.installed()


def test_an_entry_point_that_is_no_adapter_is_a_clear_error(plugin):
    """`reconcile schema` died on it: "internal error: AttributeError: 'str' object has no
    attribute 'config_model'"."""
    from reconciler.errors import ConfigError
    from reconciler.workspace.schema import json_schema

    with pytest.raises(ConfigError, match="is not a destination adapter"):
        registry.load("not_a_class")
    json_schema()  # skips it, as it skips an adapter that cannot be imported
