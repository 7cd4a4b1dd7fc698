"""A TCP relay on loopback, in front of the test server, that a test can cut and restore.

A process that reaches the server through the relay is partitioned from it when the relay is
cut: nothing it sends arrives, nothing comes back, and its connections neither fail nor end
(as when a link drops packets and TCP keeps retrying); a new connection is accepted and held.
Restored, the relay forwards what was held, and the process finds its link back.
"""

from __future__ import annotations

import selectors
import socket
import threading

__all__ = ["Relay"]


class Relay:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``, on thread ``relay``."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # _lock guards _cut, _held and _pairs; the loop thread alone uses the selector.
        self._lock = threading.Lock()
        self._cut = False
        self._held: list[socket.socket] = []  # accepted while cut: connected once restored
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Forward nothing from now on, in either direction."""
        with self._lock:
            self._cut = True
        self._wake()

    def restore(self) -> None:
        """Forward again, what was held first."""
        with self._lock:
            self._cut = False
        self._wake()

    def close(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(10)
        for sock in [*self._pairs, self._listener, self._wake_r, self._wake_w, *self._held]:
            sock.close()

    def _wake(self) -> None:
        self._wake_w.send(b"x")

    def _connect(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._target))
        self._pairs[client] = upstream
        self._pairs[upstream] = client

    def _loop(self) -> None:
        watching = False  # whether the connections' sockets are in the selector
        while not self._stop:
            with self._lock:
                cut = self._cut
                if not cut:
                    for client in self._held:
                        self._connect(client)
                    self._held = []
            if cut == watching:  # cut: stop reading, so that nothing moves; else read again
                for sock in self._pairs:
                    if cut:
                        self._selector.unregister(sock)
                    else:
                        self._selector.register(sock, selectors.EVENT_READ)
                watching = not cut
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                elif sock is self._listener:
                    client, _ = self._listener.accept()
                    with self._lock:
                        if self._cut:
                            self._held.append(client)
                            continue
                    self._connect(client)
                    self._selector.register(client, selectors.EVENT_READ)
                    self._selector.register(self._pairs[client], selectors.EVENT_READ)
                elif sock in self._pairs:
                    self._forward(sock)  # type: ignore[arg-type]

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, peer):  # one side closed: close the other
            self._selector.unregister(end)
            del self._pairs[end]
            end.close()
