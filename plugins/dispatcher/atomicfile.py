"""Replace a small text file (list file edits, the admin state file), keeping its owner and mode."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str, default_mode: int = 0o644) -> None:
    """Replace ``path`` with ``text``; the file keeps its permission bits, owner and group.

    The service reads the file as its own user (``b2bua``) while an operator may edit it as root
    or as another user: whoever writes, the service must still read it afterwards.

    * **Atomic** (a temporary file in the same folder, fsync, rename, fsync of the folder)
      whenever the new file can carry the old one's owner and group: always as root (the
      temporary file is chowned before the rename), and as the file's owner when its group is
      ours or one we belong to.
    * **In place** (write, truncate, fsync: not atomic, a reader at that instant may see part of
      it) when it cannot: a user allowed by the group bits to write a file another user owns.
      A rename would hand the file to that user, and its owner (the service) might no longer
      read it; writing in place keeps owner, group, mode and ACLs as they are.
    * ``PermissionError`` when the file is someone else's and not writable by us either: we were
      never allowed to change it, even if the folder would let us replace it.

    A new file gets ``default_mode`` and our user and group. A symbolic link is written through:
    the file it points to is replaced (in its own folder) and the link stays a link, as an
    editor saves it (a list file kept under configuration management and linked into place).

    :raises OSError: the folder is not writable, the disk is full, the file is not ours to write.
    """
    if path.is_symlink():
        # realpath, not Path.resolve: a link loop then fails below as OSError (ELOOP), which
        # callers report; Python 3.11's resolve raises RuntimeError for it
        path = Path(os.path.realpath(path))
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if old is not None and not _take_owner(f.fileno(), old):
                in_place = old
            else:
                in_place = None
                f.write(text)
                f.flush()
                # after the chown: a chown clears the set-user/group-ID bits
                os.fchmod(f.fileno(), default_mode if old is None else old.st_mode & 0o7777)
                os.fsync(f.fileno())
        if in_place is None:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # renamed (gone), unused or half written
    if in_place is not None:
        _write_in_place(path, text, in_place)
    else:
        _fsync_folder(path.parent)


def _take_owner(fd: int, old: os.stat_result) -> bool:
    """Give the open file ``fd`` the owner and group of ``old``; False when we may not."""
    new = os.fstat(fd)
    uid = old.st_uid if new.st_uid != old.st_uid else -1
    gid = old.st_gid if new.st_gid != old.st_gid else -1
    if uid == gid == -1:
        return True
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:  # not root: another user's file, or a group we are not in
        return False
    return True


def _write_in_place(path: Path, text: str, old: os.stat_result) -> None:
    """Overwrite ``path`` in place (it keeps its inode: owner, group, mode, ACLs)."""
    try:
        f = path.open("r+", encoding="utf-8")
    except PermissionError:
        raise PermissionError(
            errno.EACCES,
            f"owned by {_owner(old)} and not writable by this user: replacing it would take it from its owner;"
            " run this as root or as its owner",
            str(path),
        ) from None
    with f:
        f.write(text)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def _owner(st: os.stat_result) -> str:
    """``b2bua:b2bua`` (numbers for unknown ids)."""
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
