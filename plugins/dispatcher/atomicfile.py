"""Replace a small text file atomically (list file edits, the admin state file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str, default_mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file in the same folder, fsync,
    rename, fsync of the folder. The old file's permission bits, owner and group are kept.

    The owner matters: root editing a list file that the service user owns (``b2bua
    dispatcher add`` run as root, docs/deploy.md) must not leave a root-owned 0640 file the
    B2BUA can no longer read (its next reload, or restart, would fail). Only root may give a
    file away; anyone else keeps what the rename gives (their own file, as before).

    :raises OSError: the folder is not writable, the disk is full, ...
    """
    try:
        old = path.stat()
    except FileNotFoundError:
        mode, owner = default_mode, None
    else:
        mode, owner = old.st_mode & 0o7777, (old.st_uid, old.st_gid)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)  # after chown, which clears set-id bits
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
