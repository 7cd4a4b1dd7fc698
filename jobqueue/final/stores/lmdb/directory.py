"""The LMDB store's directory: what may be in it, who owns it, and a full disk.

Payloads often hold personal data: a store's directory is created 0700 and its files 0600,
as PostgreSQL keeps its data directory (a directory made beforehand keeps its own mode). A
store file that is a symbolic link is refused, by owners and readers alike: opening LMDB or
the log through it would write wherever it points, with the rights of whoever runs.

Ownership: an exclusive ``flock`` on ``owner.lock`` (holding the owner's pid) lets one queue or
repair at a time own the store, in this process or another; readers need no lock (LMDB readers
never block its writer). A directory holding only a store's files is a store at any stage of
its creation, so two processes creating one at once meet at the lock (``StoreLocked``), and a
creation killed half-way is completed at the next open.
"""

from __future__ import annotations

import errno
import fcntl
import os

from jobqueue.errors import StoreError, StoreLocked

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "LOCK_FILE",
    "check_directory",
    "disk_full_note",
    "give_up_ownership",
    "owner_pid",
    "take_ownership",
]

LOCK_FILE = "owner.lock"
#: Modes of what a store creates: its owner's alone.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# and the log's wal-*.log; attempts.ring is _lmdb_starts's
_STORE_FILES = frozenset({LOCK_FILE, "data.mdb", "lock.mdb", "attempts.ring"})


def _is_store_file(name: str) -> bool:
    return name in _STORE_FILES or (name.startswith("wal-") and name.endswith(".log"))


def check_directory(path: str, *, create: bool) -> None:
    """Refuse a path that is not (and, with ``create``, cannot become) a store directory.

    A directory holding only a store's files is one, whatever stage of its creation it is
    in: another process may be creating it now (it holds the lock: ``StoreLocked`` follows),
    or one was killed while creating it (the next open completes it).
    """
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise StoreError(f"store path {path!r} is not a directory")
        if not os.path.exists(path):
            if not create:
                raise StoreError(f"store path {path!r} does not exist")
            try:
                # (another process may create it at once)
                os.makedirs(path, mode=DIRECTORY_MODE, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store directory {path!r}: {exc}") from None
        if create and not os.access(path, os.W_OK | os.X_OK):
            raise StoreError(f"store directory {path!r} is not writable")
        names = os.listdir(path)
    except OSError as exc:
        raise StoreError(f"cannot use store directory {path!r}: {exc}") from None
    # A store with its data file is one, whatever sits beside it (a .DS_Store, a note).
    foreign = [] if "data.mdb" in names else sorted(n for n in names if not _is_store_file(n))
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        raise StoreError(f"{path!r} is not a jobqueue store: it holds other files ({shown})")
    linked = sorted(n for n in names if _is_store_file(n)
                    and os.path.islink(os.path.join(path, n)))
    if linked:
        raise StoreError(f"store file {linked[0]!r} in {path!r} is a symbolic link: refused, "
                         "since opening the store through it would write where it points")


def owner_pid(path: str) -> int | None:
    """Return the pid of the process owning the store at ``path``, or None if it is free.

    Reads ``/proc/locks`` so that asking never takes the lock (which could make an owner that
    is starting up fail); elsewhere, falls back to the pid file and a liveness check.
    """
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        inode = os.stat(lock_path).st_ino
    except FileNotFoundError:
        return None
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:567 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    return int(fields[4])
        return None
    except OSError:
        pass
    try:
        with open(lock_path) as f:
            pid = int(f.read().strip() or 0)
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# Lock descriptors this process holds. A flock belongs to the open file, which a forked child
# shares: if the child kept its copy, the store would stay locked after the parent gave it up
# for as long as the child lived. The child closes its copies, which releases nothing of the
# parent's (the parent's descriptor still holds the lock).
_owned_fds: set[int] = set()


def _forget_ownership_in_child() -> None:
    for fd in _owned_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _owned_fds.clear()


os.register_at_fork(after_in_child=_forget_ownership_in_child)


def give_up_ownership(fd: int) -> None:
    """Close a descriptor from :func:`take_ownership`, which gives the store up."""
    _owned_fds.discard(fd)
    os.close(fd)


def take_ownership(path: str) -> int:
    """Lock the store for this process and return the lock file's descriptor.

    Raises ``StoreLocked`` naming the owner if another queue or repair holds it. Closing the
    descriptor (:func:`give_up_ownership`) gives the store up.
    """
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open {lock_path!r}: {exc}") from None
    try:
        # flock, not fcntl locks: two opens in one process conflict, so a second queue in
        # the same process is refused too.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"cannot lock {lock_path!r}: {exc}") from None
        raise StoreLocked(path, owner_pid(path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _owned_fds.add(fd)
    return fd


# Below this much free space, an I/O error writing the store is taken for a full disk: LMDB
# reports a failed write of its pages as "Input/output error" as often as "No space left".
_NEARLY_FULL = 16 << 20


def disk_full_note(path: str, error: BaseException) -> str:
    """Words to add to a failure to write the store at ``path`` when the disk is full."""
    number = getattr(error, "errno", None)
    text = str(error)
    full = number in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
    try:
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    io_error = number == errno.EIO or "Input/output error" in text
    if not full and not (io_error and free is not None and free < _NEARLY_FULL):
        return ""
    room = "" if free is None else f", {free} bytes free"
    return f" (the disk is full{room}: free some space, and the store carries on)"
