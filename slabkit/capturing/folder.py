"""Writing into a capture folder without ever following a symlink someone else planted.

A capture writes files into a folder that may sit in a tree another user controls (``sudo make
demo`` in a user's checkout, ``slabkit capture -o DIR`` as root). Every write here goes through
a descriptor of the folder opened with ``O_DIRECTORY | O_NOFOLLOW`` and creates names with
``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to it (a planted symlink or file makes the write
fail, never redirects it), then renames into place within the same folder (a rename replaces
the name, never follows it). A folder made by root inside a directory another user owns stays
root's while the capture runs and is handed to that user (``fchown``, no symlink followed) when
it is saved, so captures are the user's files; an existing folder of another user is refused.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path
from typing import IO

from slabkit.errors import InvalidInput, PermissionNeeded, SlabkitError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> str:
    """A plain file name inside a capture folder (no path, no leading dot but for temporaries)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name.lstrip(".")) or ".." in name:
        raise InvalidInput(f"{name!r} is not a capture file name")
    return name


def _describe(err: OSError, path: Path, doing: str) -> SlabkitError:
    """One line saying what went wrong with ``path`` and what to do."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionNeeded(f"cannot {doing} {path}: {os.strerror(err.errno)}; pick a "
                                "folder you can write (-o DIR, or $SLABKIT_CAPTURE_DIR)")
    if err.errno == errno.ENOSPC:
        return SlabkitError(f"cannot {doing} {path}: the disk is full; free space and retry")
    if err.errno in (errno.ELOOP, errno.EMLINK):
        return InvalidInput(f"{path} is a symbolic link: slabkit writes captures only into "
                            "real folders; pick another path")
    if err.errno == errno.ENOTDIR:
        return InvalidInput(f"cannot {doing} {path}: a part of it is not a folder")
    if err.errno == errno.EEXIST:
        return InvalidInput(f"cannot {doing} {path}: it exists already")
    return SlabkitError(f"cannot {doing} {path}: {os.strerror(err.errno or 0) or err}")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


class CaptureFolder:
    """A capture folder held open by descriptor; all writes go through :meth:`create`."""

    def __init__(self, path: Path, fd: int, owner: tuple[int, int] | None):
        self.path = path
        self.fd = fd
        #: (uid, gid) the folder and its files are handed to when saved (root writing into
        #: another user's tree), or None
        self.owner = owner

    # --- making and opening ------------------------------------------------------------
    @classmethod
    def make(cls, path: Path, *, exist_ok_empty: bool = False) -> CaptureFolder:
        """Create ``path`` (its parents too) and open it. ``exist_ok_empty``: an existing empty
        folder of our own is fine (``-o DIR``); one of another user is refused when root."""
        path = Path(os.path.abspath(path))
        base = _nearest_existing(path.parent)
        try:
            st = os.stat(base)
        except OSError as e:
            raise _describe(e, base, "use") from None
        owner = None
        if os.geteuid() == 0 and st.st_uid != 0:
            owner = (st.st_uid, st.st_gid)
        try:
            os.makedirs(path.parent, exist_ok=True)
            made = []
            p = path.parent
            while p != base and p.is_relative_to(base):
                made.append(p)
                p = p.parent
            if owner:
                for d in made:
                    _hand_dir(d, owner)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not exist_ok_empty:
                    raise
                lst = os.lstat(path)
                if stat.S_ISLNK(lst.st_mode):
                    raise OSError(errno.ELOOP, "symbolic link") from None
                if not stat.S_ISDIR(lst.st_mode):
                    raise InvalidInput(f"{path} exists and is not a folder: pass a folder "
                                       "path (slabkit creates it)") from None
                if os.listdir(path):
                    raise InvalidInput(f"output folder {path} exists and is not empty: pick a "
                                       "new folder so no earlier capture is overwritten") from None
                if lst.st_uid != os.geteuid():
                    raise InvalidInput(f"{path} belongs to another user: as root, slabkit only "
                                       "writes into folders it creates; pass a new path") from None
            fd = os.open(path, _DIR_FLAGS)
        except OSError as e:
            raise _describe(e, path, "create the capture folder") from None
        return cls(path, fd, owner)

    @classmethod
    def open(cls, path: Path) -> CaptureFolder:
        """Open an existing capture folder (to rewrite its tables, ``--reparse``)."""
        path = Path(os.path.abspath(path))
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as e:
            raise _describe(e, path, "open") from None
        st = os.fstat(fd)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None
        return cls(path, fd, owner)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CaptureFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __fspath__(self) -> str:
        return str(self.path)

    # --- writing -------------------------------------------------------------------------
    def create(self, name: str) -> IO[bytes]:
        """A new file ``name`` in the folder, for writing (fails if the name exists at all)."""
        check_name(name)
        try:
            fd = os.open(name, _NEW_FLAGS, 0o644, dir_fd=self.fd)
        except OSError as e:
            raise _describe(e, self.path / name, "write") from None
        return os.fdopen(fd, "wb")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically: a new temporary file, flushed, renamed over ``name``."""
        tmp = f".{check_name(name)}.tmp"
        self.remove(tmp)
        try:
            with self.create(tmp) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.rename(tmp, name)
        except BaseException:
            self.remove(tmp)
            raise

    def rename(self, old: str, new: str) -> None:
        """Rename within the folder (replaces ``new``, never follows it)."""
        try:
            os.rename(check_name(old), check_name(new), src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as e:
            raise _describe(e, self.path / new, "write") from None

    def remove(self, name: str) -> None:
        try:
            os.unlink(check_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _describe(e, self.path / name, "remove") from None

    def adopt(self, source: Path, name: str | None = None) -> None:
        """Move the file ``source`` (from a private work folder) in as ``name``: renamed when
        on the same filesystem, else copied into a new file."""
        name = check_name(name or source.name)
        try:
            os.rename(source, name, dst_dir_fd=self.fd)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise _describe(e, self.path / name, "write") from None
        with open(source, "rb") as src, self.create(name) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.unlink(source)

    def exists(self, name: str) -> bool:
        try:
            os.stat(check_name(name), dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    # --- handing over ----------------------------------------------------------------------
    def hand_over(self) -> None:
        """Give the folder and its files to :attr:`owner` (root writing into a user's tree)."""
        if not self.owner:
            return
        uid, gid = self.owner
        for entry in os.listdir(self.fd):
            try:
                os.chown(entry, uid, gid, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
        os.fchown(self.fd, uid, gid)


def _hand_dir(path: Path, owner: tuple[int, int]) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)
