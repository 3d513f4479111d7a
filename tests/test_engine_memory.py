"""The engine session's memory limit: the workspace's (or the default), halved while members
are sent and restored exactly afterwards, also when sending fails."""

from __future__ import annotations

import pytest

from reconciler.enginedb import Session, memory_bytes
from tests.conftest import engine_session, profile


def limit(session: Session) -> int:
    setting = session.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    return memory_bytes(setting)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("953.6 MiB", int(953.6 * 2**20)),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("512 KiB", 512 * 2**10),
        ("2GB", 2 * 10**9),
        ("100 bytes", 100),
        ("nonsense", 0),
        ("12 parsecs", 0),
    ],
)
def test_memory_settings_are_read_in_bytes(setting, expected):
    assert memory_bytes(setting) == expected


def test_sending_halves_the_engine_memory_limit_and_restores_it(workspace):
    ws = workspace({}, profiles=[profile(i, a=True) for i in range(3)])
    text = (ws.root / "reconcile.yaml").read_text()
    (ws.root / "reconcile.yaml").write_text(
        text.replace("source:\n", "source:\n  memory_limit: 600MB\n", 1)
    )
    with engine_session(ws.root, write_state=True, lock_down=False) as session:
        configured = limit(session)
        assert abs(configured - 600 * 10**6) < 2**20
        with session.sending():
            assert abs(limit(session) - configured // 2) < 2**20
        assert limit(session) == configured
        with pytest.raises(RuntimeError), session.sending():
            raise RuntimeError("a destination failed")
        assert limit(session) == configured  # restored from the setting, not re-derived
