"""atomic_write_text: what a replaced file keeps (mode, owner and group)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from plugins.dispatcher.atomicfile import atomic_write_text


def test_the_mode_owner_and_group_of_the_old_file_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root running 'b2bua dispatcher add' on the service user's 0640 list file left it
    # root:root 0640: the B2BUA could not read it any more (its next reload and restart failed).
    # Giving a file away needs root: chown is recorded, as the test may run as anyone.
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1\n")
    path.chmod(0o640)
    calls: list[tuple[str, int, int]] = []
    real_stat = Path.stat

    def owned_by_4242(self: Path, **kw: bool) -> object:
        st = real_stat(self, **kw)
        return SimpleNamespace(st_mode=st.st_mode, st_uid=4242, st_gid=4343) if self == path else st

    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 0)
        m.setattr(os, "chown", lambda p, uid, gid: calls.append((str(p), uid, gid)))
        m.setattr(Path, "stat", owned_by_4242)
        atomic_write_text(path, "1 sip:10.0.0.2\n")
    assert path.read_text() == "1 sip:10.0.0.2\n"
    assert path.stat().st_mode & 0o7777 == 0o640
    assert len(calls) == 1
    tmp, uid, gid = calls[0]
    assert (Path(tmp).parent, uid, gid) == (tmp_path, 4242, 4343)


def test_a_new_file_gets_the_default_mode_and_no_chown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "chown", lambda *a: calls.append(a))
    atomic_write_text(tmp_path / "state.json", "{}\n", default_mode=0o600)
    assert (tmp_path / "state.json").stat().st_mode & 0o7777 == 0o600
    assert calls == []
