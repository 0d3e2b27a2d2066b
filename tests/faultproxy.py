"""A TCP proxy on loopback that tests can cut or stall, to fault a real server connection.

``cut()`` drops every open connection and refuses new ones until ``resume()`` (the server
went down); ``stall()`` keeps connections open but stops forwarding (the server hangs in
the middle of a response, so the client must time out).
"""

from __future__ import annotations

import socket
import threading
import time

from dovecot import free_port


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.down = threading.Event()
        self.stalled = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.stalled.is_set() and not self.down.is_set():
                    time.sleep(0.05)
                if self.down.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def cut(self) -> None:
        self.down.set()
        with self._lock:
            conns, self._conns = self._conns, []
        _hang_up(*conns)

    def stall(self) -> None:
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()
        self.down.clear()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._listener.close()


def _hang_up(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
