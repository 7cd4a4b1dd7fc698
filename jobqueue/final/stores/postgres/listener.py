"""The PostgreSQL store's listener: the thread that hears other processes' notices.

Every notice on the channel is ``<kind><tag><queue>``: kind a priority's number (new jobs
of it may be claimable) or ``d`` (jobs finished), tag the sender's (8 characters; the
queries send the same form). The listener ignores other queues' notices and its own
store's, which wake the queue directly; ``s`` with its own tag stops it. A connection lost
(a server restarted) is made again, with backoff, and the queue then told to look at
everything: what was missed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue._priority import Priority
from jobqueue.errors import StoreError
from jobqueue.final.stores.postgres.connections import CHANNEL, connect, mask
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["FOREIGN", "Listener", "stop_notice"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
#: The tag of a notice no store of this process sent (a caller's transaction, the CLI).
FOREIGN = "-" * 8


def stop_notice(tag: str) -> str:
    """The payload that stops the listener of the store tagged ``tag``."""
    return "s" + tag


class Listener:
    """Hears notices on thread ``jobqueue-final-pg-listener``, on a connection of its own:
    ``on_ready(priorities)`` for new jobs (None: any), ``on_change()`` for finished ones.
    Raises StoreError if it cannot listen at first."""

    def __init__(
        self, url: str, *, queue: str, tag: str, lease: float,
        on_ready: Callable[[Iterable[Priority] | None], None],
        on_change: Callable[[], None],
    ) -> None:
        self._url = url
        self._queue = queue
        self._tag = tag
        self._lease = lease
        self._on_ready = on_ready
        self._on_change = on_change
        self._stopping = False  # read by the thread at least once a second
        self._conn = self._connect()
        self._thread = threading.Thread(
            target=self._loop, name="jobqueue-final-pg-listener", daemon=True
        )
        self._thread.start()

    def _connect(self) -> Any:
        conn = connect(self._url, lease=self._lease)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            conn.close()
            raise StoreError(f"cannot listen for other processes' jobs: "
                             f"{mask(first_line(exc), self._url)}") from exc
        return conn

    def _loop(self) -> None:
        own, queue = self._tag, self._queue
        conn = self._conn
        backoff = 0.1
        while not self._stopping:
            try:
                # A timeout, so that a stop notice missed while reconnecting cannot leave
                # this thread waiting forever: it looks at _stopping once a second.
                for notice in conn.notifies(timeout=1.0):
                    if self._stopping:
                        return
                    payload = notice.payload
                    kind, tag, name = payload[:1], payload[1:9], payload[9:]
                    if kind == "s" and tag == own:
                        return
                    if name != queue or tag == own:
                        continue  # another queue, or this store's own news
                    if kind == "d":
                        self._on_change()
                    elif kind in ("0", "1", "2"):
                        self._on_ready((_PRIORITIES[int(kind)],))
                backoff = 0.1
            except Exception as exc:
                if self._stopping:
                    return
                logger.warning("the PostgreSQL listener lost its connection (%s); "
                               "reconnecting in %.1f s", mask(first_line(exc), self._url),
                               backoff)
                time.sleep(backoff)  # a lost server: no busy loop while it is away
                backoff = min(backoff * 2, 5.0)
                try:
                    conn.close()
                    if self._stopping:
                        return
                    conn = self._conn = self._connect()
                except Exception:  # noqa: S112 - tried again after the backoff
                    continue
                if self._stopping:  # stop() may have missed this connection: close it here
                    conn.close()
                    return
                self._on_ready(None)  # what was missed meanwhile
                self._on_change()

    def stopping(self) -> None:
        """The store is closing: tell the queue nothing more, and connect no more; the
        thread ends within a second (:meth:`stop` waits for it)."""
        self._stopping = True

    def stop(self, send_stop: Callable[[], None], timeout: float | None) -> None:
        """Stop the thread: ``send_stop()`` sends it the stop notice (on another
        connection); waits up to ``timeout`` seconds (None: no limit, at least 1.5)."""
        self._stopping = True
        try:
            send_stop()
        except Exception:  # noqa: S110 - the thread looks at _stopping every second
            pass
        self._thread.join(None if timeout is None else max(timeout, 1.5))
        try:
            self._conn.close()
        except Exception:  # noqa: S110 - a connection the server already ended
            pass
