"""atomic_write_text keeps the replaced file's owner, group and mode, whoever writes it.

The service reads its list file as its own user; an operator edits it as root or as another
user. Making a file that another user owns needs root: these tests run as root (as the test
machine and CI do) and act as the other users in a forked child that drops to them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugins.dispatcher.atomicfile import atomic_write_text

SERVICE_UID, SERVICE_GID = 4242, 4243  # the b2bua user that owns the list file
EDITORS_GID = 4300  # a group the service's files may be shared with
OPERATOR_UID, OPERATOR_GID = 4244, 4245  # an operator, not root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder every user may write (the pytest tmp folders are root's only)."""
    with tempfile.TemporaryDirectory(prefix="b2bua-atomic-") as name:
        os.chmod(name, 0o777)
        yield Path(name)


def owned_file(folder: Path, uid: int, gid: int, mode: int) -> Path:
    path = folder / "dispatcher.list"
    path.write_text("1 sip:192.0.2.1:5060\n")
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def as_user(uid: int, gid: int, groups: list[int], action: Callable[[], None]) -> str:
    """Run ``action`` in a child process as ``uid``; '' when it returned, else its exception."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            action()
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    return said


def ownership(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def test_a_new_file_gets_the_default_mode_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "new.list"
    atomic_write_text(path, "one\n", default_mode=0o640)
    assert path.read_text() == "one\n" and ownership(path) == (os.geteuid(), os.getegid(), 0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["new.list"]


@needs_root
def test_root_keeps_the_owner_group_and_mode_of_the_services_file(folder: Path) -> None:
    """`sudo b2bua dispatcher add` on the service's 0640 list file: the service can still read it."""
    path = owned_file(folder, SERVICE_UID, SERVICE_GID, 0o640)
    inode = path.stat().st_ino
    atomic_write_text(path, "1 sip:192.0.2.2:5060\n")
    assert ownership(path) == (SERVICE_UID, SERVICE_GID, 0o640)
    assert path.stat().st_ino != inode  # replaced by a rename: atomic
    assert as_user(SERVICE_UID, SERVICE_GID, [], path.read_text) == ""
    assert [p.name for p in folder.iterdir()] == ["dispatcher.list"]


@needs_root
def test_root_keeps_set_group_id_bits(folder: Path) -> None:
    path = owned_file(folder, SERVICE_UID, SERVICE_GID, 0o2640)  # a chown would clear the bit
    atomic_write_text(path, "x\n")
    assert ownership(path) == (SERVICE_UID, SERVICE_GID, 0o2640)


@needs_root
def test_the_owner_keeps_its_file_and_the_write_is_atomic(folder: Path) -> None:
    path = owned_file(folder, SERVICE_UID, SERVICE_GID, 0o600)
    inode = path.stat().st_ino
    assert as_user(SERVICE_UID, SERVICE_GID, [], lambda: atomic_write_text(path, "two\n")) == ""
    assert path.read_text() == "two\n" and ownership(path) == (SERVICE_UID, SERVICE_GID, 0o600)
    assert path.stat().st_ino != inode


@needs_root
def test_another_user_allowed_by_the_group_writes_in_place_and_the_owner_keeps_the_file(folder: Path) -> None:
    """A rename would make the file the operator's, 0640: the service could no longer read it."""
    path = owned_file(folder, SERVICE_UID, EDITORS_GID, 0o660)
    inode = path.stat().st_ino
    said = as_user(OPERATOR_UID, OPERATOR_GID, [EDITORS_GID],
                   lambda: atomic_write_text(path, "1 sip:192.0.2.3:5060\n"))
    assert said == ""
    assert path.read_text() == "1 sip:192.0.2.3:5060\n"
    assert ownership(path) == (SERVICE_UID, EDITORS_GID, 0o660) and path.stat().st_ino == inode
    assert [p.name for p in folder.iterdir()] == ["dispatcher.list"]


@needs_root
def test_another_users_file_we_may_not_write_is_refused_not_taken(folder: Path) -> None:
    """The folder would allow a rename; the file's own bits say no: it stays as it was."""
    path = owned_file(folder, SERVICE_UID, EDITORS_GID, 0o640)
    said = as_user(OPERATOR_UID, OPERATOR_GID, [EDITORS_GID], lambda: atomic_write_text(path, "gone\n"))
    assert said.startswith("PermissionError: ") and "owned by 4242:4300" in said
    assert "run this as root or as its owner" in said
    assert path.read_text() == "1 sip:192.0.2.1:5060\n"
    assert ownership(path) == (SERVICE_UID, EDITORS_GID, 0o640)
    assert [p.name for p in folder.iterdir()] == ["dispatcher.list"]


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    # a list file kept elsewhere (configuration management) and linked into place: replacing the
    # link by a regular file would cut it off from the file the operator maintains
    (tmp_path / "managed").mkdir()
    target = tmp_path / "managed" / "dispatcher.list"
    target.write_text("1 sip:a\n")
    target.chmod(0o640)
    link = tmp_path / "dispatcher.list"
    link.symlink_to(target)
    atomic_write_text(link, "1 sip:b\n")
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == "1 sip:b\n" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dispatcher.list", "managed"]


def test_a_symbolic_link_loop_is_an_os_error_the_callers_report(tmp_path: Path) -> None:
    loop = tmp_path / "dispatcher.list"
    loop.symlink_to(tmp_path / "other.list")
    (tmp_path / "other.list").symlink_to(loop)
    with pytest.raises(OSError):
        atomic_write_text(loop, "1 sip:b\n")
    assert loop.is_symlink() and (tmp_path / "other.list").is_symlink()
