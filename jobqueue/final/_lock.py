"""The mutex final's threads share: a Lock that lets its holder finish before a waiter sleeps."""

from __future__ import annotations

import functools
import threading
import time

__all__ = ["YieldingLock"]

# How many times a thread that finds the mutex taken gives the interpreter away before it
# sleeps on the lock. Measured with 4 producers and LMDB: 1 was worse than none; 3 to 20
# were alike.
_YIELDS = 3


class YieldingLock:
    """A mutex that lets its holder finish before it puts a waiter to sleep.

    Under the GIL, a thread that finds the mutex taken almost always finds a holder that the
    interpreter was taken from in the middle of its critical section: the holder needs the
    GIL back to let go. A plain Lock puts the waiter to sleep in the kernel at once, and
    every such sleep costs context switches and GIL hand-offs; with 4 producers and 4 workers
    on 2 cores, final ran at half its one-producer rate. ``time.sleep(0)`` hands the GIL over
    without sleeping; a waiter does that a few times, then blocks as a Lock does. It works
    with ``threading.Condition``, which needs ``acquire``, ``release`` and ``_is_owned``.
    """

    __slots__ = ("_lock", "release", "locked", "acquire_now", "_is_owned")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.release = self._lock.release
        self.locked = self._lock.locked
        #: Take the lock if it is free, without waiting: True if taken. All in C, for a hot
        #: path that writes ``if not lock.acquire_now(): lock.acquire()``, where ``with``
        #: would call two Python methods however free the lock is.
        self.acquire_now = functools.partial(self._lock.acquire, False)
        # threading.Condition asks this before every notify, on paths every job takes. As
        # Condition decides for a plain Lock, taken means taken by the caller: one C call.
        self._is_owned = self._lock.locked

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        if lock.acquire(False):
            return True
        if not blocking:
            return False
        for _ in range(_YIELDS):
            time.sleep(0)
            if lock.acquire(False):
                return True
        return lock.acquire(True, timeout)

    __enter__ = acquire

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
