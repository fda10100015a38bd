"""Writing into a capture folder without ever following a symlink someone else planted.

A capture writes files into a folder that may sit in a tree another user controls (``sudo make
demo`` in a user's checkout, ``slabkit capture -o DIR`` as root). The folder's path is opened
one component at a time from ``/``, each through the descriptor of the one before
(``O_DIRECTORY | O_NOFOLLOW``), missing folders made with ``mkdir`` relative to it. As root, a
symbolic link is followed only when root owns it, or, when another user owns it, only to
create folders inside that user's own folders (the link's owner could write there anyway): a
user's ``~/data -> /etc`` is refused, ``~/data -> /mnt/big/me`` (theirs) is fine.

Every file is then created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to the folder's
descriptor (a planted symlink or file makes the write fail, never redirects it) and renamed into
place within the same folder (a rename replaces the name, never follows it). A folder made by
root inside a directory another user owns stays root's while the capture runs and is handed to
that user (``fchown``, no symlink followed) when it is saved, so captures are the user's files;
an existing folder of another user is refused (``-o DIR``), and so is rebuilding (``--reparse``)
another user's capture as root: parsing needs no privilege, and root reading files another user
controls could leak what their symlinks point to. Reads by name go through
:attr:`CaptureFolder.read_path`, which names this very folder even if a name above it is
swapped for a symlink while a capture runs.
"""
from __future__ import annotations

import errno
import os
import pwd
import re
import shutil
import stat
from pathlib import Path
from typing import IO

from slabkit.errors import (
    CaptureNotFound,
    DiskFull,
    InvalidInput,
    ParseError,
    PermissionNeeded,
    SlabkitError,
)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_LINKS = 40          # as the kernel's own limit on links followed in one path


class FolderExists(InvalidInput):
    """The capture folder's name is taken already (a new capture picks the next name)."""


def check_name(name: str) -> str:
    """A plain file name inside a capture folder (no path, no leading dot but for temporaries)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name.lstrip(".")) or ".." in name:
        raise InvalidInput(f"{name!r} is not a capture file name")
    return name


def describe_os_error(err: OSError, path: Path | str, doing: str) -> SlabkitError:
    """One line saying what went wrong with ``path`` and what to do."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionNeeded(f"cannot {doing} {path}: {os.strerror(err.errno)}; pick a "
                                "folder you can write (-o DIR, or $SLABKIT_CAPTURE_DIR)")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"cannot {doing} {path}: the disk is full; free space and retry")
    if err.errno in (errno.ELOOP, errno.EMLINK):
        return InvalidInput(f"{path} is a symbolic link: slabkit writes and reads capture "
                            "files only as real files and folders; pick another path")
    if err.errno == errno.ENOTDIR:
        return InvalidInput(f"cannot {doing} {path}: a part of it is not a folder")
    if err.errno == errno.EEXIST:
        return FolderExists(f"cannot {doing} {path}: it exists already")
    if err.errno == errno.ENOENT:
        return InvalidInput(f"cannot {doing} {path}: a folder on the way does not exist or "
                            "cannot hold new folders (/proc, /sys); pick a folder you can write")
    return SlabkitError(f"cannot {doing} {path}: {os.strerror(err.errno or 0) or err}")


def user_name(uid: int) -> str:
    """``name (uid N)`` for messages."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


class _Walk:
    """Open a folder path component by component from ``/`` (see the module doc).

    After :meth:`to`: ``fd`` is the folder's descriptor; ``base`` the ``(uid, gid)`` of the
    deepest folder that existed before (where the first new folder was made, or the folder's
    parent); ``made`` whether the last component was created; ``exposed`` whether a folder on
    the way belongs to another user (who could rename names in it while we work)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.base: tuple[int, int] | None = None
        self.made = False
        self.exposed = False
        self._root = os.geteuid() == 0
        #: (uid, link) of another user's symlink followed on the way (root only)
        self.tainted_by: tuple[int, str] | None = None

    def to(self, *, create_parents: bool, create_leaf: bool,
           follow_leaf: bool = True) -> _Walk:
        """Walk to the folder. ``create_leaf``: the last component must be new (a name that
        exists, even as a symlink, raises :class:`FolderExists`); ``follow_leaf=False``: a
        symlink as the last component is refused (ELOOP)."""
        todo = [p for p in reversed(str(self.path).split("/")) if p]
        fd = os.open("/", _DIR_FLAGS)
        where = "/"
        links = 0
        try:
            while todo:
                name = todo.pop()
                is_leaf = not todo
                if name == ".":
                    continue
                if name == "..":
                    fd = self._step(fd, os.open("..", _DIR_FLAGS, dir_fd=fd))
                    where = os.path.dirname(where.rstrip("/")) or "/"
                    continue
                here = os.path.join(where, name)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not (create_leaf if is_leaf else create_parents):
                        raise
                    fd = self._make(fd, name, here, leaf=is_leaf)
                    where = here
                    continue
                if is_leaf and create_leaf:
                    raise FolderExists(f"{here} exists already")
                if stat.S_ISLNK(st.st_mode):
                    if is_leaf and not follow_leaf:
                        raise OSError(errno.ELOOP, "symbolic link", here)
                    links += 1
                    if links > _MAX_LINKS:
                        raise OSError(errno.ELOOP, "too many symbolic links", here)
                    self._follow(st.st_uid, here)
                    target = os.readlink(name, dir_fd=fd)
                    todo.extend(p for p in reversed(target.split("/")) if p)
                    if target.startswith("/"):
                        fd = self._step(fd, os.open("/", _DIR_FLAGS))
                        where = "/"
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if is_leaf:
                        raise InvalidInput(f"{here} exists and is not a folder: pass a folder "
                                           "path (slabkit creates it)")
                    raise OSError(errno.ENOTDIR, "not a folder", here)
                if st.st_uid not in (0, os.geteuid()):
                    self.exposed = True
                fd = self._step(fd, os.open(name, _DIR_FLAGS, dir_fd=fd))
                where = here
            if self.base is None:
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                try:
                    pst = os.fstat(parent)
                finally:
                    os.close(parent)
                self.base = (pst.st_uid, pst.st_gid)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    @staticmethod
    def _step(old: int, new: int) -> int:
        os.close(old)
        return new

    def _follow(self, link_uid: int, here: str) -> None:
        """May this symlink be followed? As root: root's always; a user's only into that
        user's folders (checked where something is created)."""
        if not self._root or link_uid == 0:
            return
        if self.tainted_by is not None and self.tainted_by[0] != link_uid:
            raise InvalidInput(f"{self.path}: the way there passes symbolic links of two "
                               f"users ({self.tainted_by[1]}, {here}): as root, slabkit does not "
                               "follow them; pass a real folder")
        self.tainted_by = (link_uid, here)
        self.exposed = True

    def _make(self, fd: int, name: str, here: str, *, leaf: bool) -> int:
        pst = os.fstat(fd)
        if self.tainted_by is not None and pst.st_uid != self.tainted_by[0]:
            uid, link = self.tainted_by
            raise InvalidInput(
                f"{self.path}: {link} is a symbolic link of user {user_name(uid)} leading to "
                f"{os.path.dirname(here)}, which is not theirs: as root, slabkit follows "
                "another user's link only into that user's own folders; pass a real folder")
        if self.base is None:
            self.base = (pst.st_uid, pst.st_gid)
        if pst.st_uid not in (0, os.geteuid()):
            self.exposed = True
        os.mkdir(name, 0o755, dir_fd=fd)
        new = os.open(name, _DIR_FLAGS, dir_fd=fd)
        owner = self.base
        if not leaf and self._root and owner[0] != 0:
            os.fchown(new, *owner)       # a folder on the way: the tree's owner's at once
        if leaf:
            self.made = True
        return self._step(fd, new)


class CaptureFolder:
    """A capture folder held open by descriptor; all writes go through :meth:`create`."""

    def __init__(self, path: Path, fd: int, owner: tuple[int, int] | None, *,
                 exposed: bool = False):
        self.path = path
        self.fd = fd
        #: (uid, gid) the folder and its files are handed to when saved (root writing into
        #: another user's tree), or None
        self.owner = owner
        #: a folder on the way belongs to another user (who may rename names in it)
        self.exposed = exposed

    # --- making and opening ------------------------------------------------------------
    @classmethod
    def make(cls, path: Path, *, exist_ok_empty: bool = False) -> CaptureFolder:
        """Create ``path`` (its parents too) and open it. ``exist_ok_empty``: an existing empty
        folder of our own is fine (``-o DIR``); one of another user is refused."""
        path = Path(os.path.abspath(path))
        walk = _Walk(path)
        try:
            try:
                walk.to(create_parents=True, create_leaf=True)
            except FolderExists:
                if not exist_ok_empty:
                    raise
                walk = _Walk(path).to(create_parents=False, create_leaf=False,
                                      follow_leaf=False)
                if walk.tainted_by is not None:
                    os.close(walk.fd)
                    raise InvalidInput(f"{path} is reached through {walk.tainted_by[1]}, a "
                                       f"symbolic link of user {user_name(walk.tainted_by[0])}: "
                                       "as root, slabkit writes only into folders it creates "
                                       "there; pass a new path")
                cls._check_reusable(path, walk.fd)
        except OSError as e:
            raise describe_os_error(e, path, "create the capture folder") from None
        owner = None
        if os.geteuid() == 0 and walk.base and walk.base[0] != 0:
            owner = walk.base
        return cls(path, walk.fd, owner, exposed=walk.exposed)

    @staticmethod
    def _check_reusable(path: Path, fd: int) -> None:
        """An existing ``-o DIR``: ours and empty, or refused."""
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise InvalidInput(f"{path} belongs to user {user_name(st.st_uid)}: as root, "
                                   "slabkit writes only into folders it creates or its own; "
                                   "pass a new path")
            if os.listdir(fd):
                raise InvalidInput(f"output folder {path} exists and is not empty: pick a new "
                                   "folder so no earlier capture is overwritten")
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, path: Path) -> CaptureFolder:
        """Open an existing capture folder (to read it, or rewrite its tables: ``--reparse``).
        As root, a folder of another user is handed back to them when rewritten."""
        path = Path(os.path.abspath(path))
        try:
            walk = _Walk(path).to(create_parents=False, create_leaf=False)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise CaptureNotFound(f"{path} does not exist") from None
            if e.errno == errno.ENOTDIR:
                raise InvalidInput(f"{path} is not a folder (or a part of it is not)") from None
            raise describe_os_error(e, path, "open") from None
        st = os.fstat(walk.fd)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None
        return cls(path, walk.fd, owner, exposed=walk.exposed or owner is not None)

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

    # --- reading -------------------------------------------------------------------------
    @property
    def read_path(self) -> Path:
        """A path naming this folder for code that opens files by name (the parsers).

        Where another user controls a folder on the way (:attr:`exposed`), it is
        ``/proc/self/fd/N``: the kernel resolves it to the folder this descriptor holds, so a
        rename or a planted symlink above it cannot redirect a read. Errors naming it are given
        the folder's own path (:meth:`own_errors`)."""
        return Path(f"/proc/self/fd/{self.fd}") if self.exposed else self.path

    def own_errors(self, err: ParseError) -> ParseError:
        """``err`` with :attr:`read_path` replaced by the folder's path."""
        if not err.path or not self.exposed:
            return err
        return ParseError(err.message, path=err.path.replace(str(self.read_path),
                                                              str(self.path)),
                          lineno=err.lineno, line=err.line)

    def open_file(self, name: str) -> IO[bytes]:
        """Open the regular file ``name`` of the folder for reading, never through a symlink."""
        check_name(name)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            raise describe_os_error(e, self.path / name, "read") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InvalidInput(f"{self.path / name} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_bytes(self, name: str) -> bytes:
        with self.open_file(name) as f:
            return f.read()

    def sha256(self, name: str) -> str:
        """The sha256 of file ``name`` (hex), read without following a symlink."""
        import hashlib
        h = hashlib.sha256()
        with self.open_file(name) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def free_bytes(self) -> int:
        """Bytes still free on the folder's filesystem for this user."""
        st = os.fstatvfs(self.fd)
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize

    # --- writing -------------------------------------------------------------------------
    def create(self, name: str) -> IO[bytes]:
        """A new file ``name`` in the folder, for writing (fails if the name exists at all)."""
        check_name(name)
        try:
            fd = os.open(name, _NEW_FLAGS, 0o644, dir_fd=self.fd)
        except OSError as e:
            raise describe_os_error(e, self.path / name, "write") from None
        return _Writer(os.fdopen(fd, "wb"), self.path / name)

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
            raise describe_os_error(e, self.path / new, "write") from None

    def remove(self, name: str) -> None:
        try:
            os.unlink(check_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise describe_os_error(e, self.path / name, "remove") from None

    def remove_temporaries(self) -> None:
        """Remove the ``.NAME.tmp`` files a failed write left (to free space on a full disk)."""
        for entry in os.listdir(self.fd):
            if entry.startswith(".") and entry.endswith(".tmp"):
                try:
                    self.remove(entry)
                except SlabkitError:
                    pass

    def adopt(self, source: Path, name: str | None = None) -> None:
        """Move the file ``source`` (from a private work folder) in as ``name``: renamed when
        on the same filesystem, else copied into a new file."""
        name = check_name(name or source.name)
        try:
            os.rename(source, name, dst_dir_fd=self.fd)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise describe_os_error(e, self.path / name, "write") from None
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


def write_file(path: Path, data: bytes) -> Path:
    """Write one file (a report) the way capture folders are written: its folder reached from
    ``/`` without following another user's links, created where missing, the file written new
    and renamed into place (never through a planted name); root writing into another user's
    tree hands the new folder and the file to that user. Returns the path."""
    path = Path(os.path.abspath(path))
    name = check_name(path.name)
    try:
        try:
            walk = _Walk(path.parent).to(create_parents=True, create_leaf=True)
        except FolderExists:
            walk = _Walk(path.parent).to(create_parents=False, create_leaf=False)
    except OSError as e:
        raise describe_os_error(e, path.parent, "create the folder of") from None
    folder = CaptureFolder(path.parent, walk.fd, None, exposed=walk.exposed)
    try:
        if os.geteuid() == 0 and walk.made and walk.base and walk.base[0] != 0:
            os.fchown(folder.fd, *walk.base)      # a new folder in a user's tree: theirs
        st = os.fstat(folder.fd)
        folder.write_bytes(name, data)
        if os.geteuid() == 0 and st.st_uid != 0:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=folder.fd, follow_symlinks=False)
    finally:
        folder.close()
    return path


class _Writer:
    """A file being written in a capture folder whose write errors (a full disk) are slabkit
    errors naming the file."""

    def __init__(self, f: IO[bytes], path: Path):
        self._f = f
        self._path = path

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            raise describe_os_error(e, self._path, "write") from None

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise describe_os_error(e, self._path, "write") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise describe_os_error(e, self._path, "write") from None

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            try:
                self._f.close()
            except OSError:
                pass
