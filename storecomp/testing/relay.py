"""A TCP relay on a free loopback port that counts the bytes it forwards, for tests
and benchmarks: put it in front of an S3 endpoint and read how many bytes a client
really sent (``sent``: client to server) or received, request headers included.

>>> with Relay(target_port) as relay:
...     store = open_store(url, endpoint=relay.endpoint, ...)
...     relay.sent  # bytes sent through it so far
"""

from __future__ import annotations

import socket
import threading


class Relay:
    """Forwards connections on ``127.0.0.1:port`` (a free one unless given) to
    ``host:target``; ``sent`` counts client-to-server bytes and ``received``
    server-to-client bytes, over all connections. :meth:`close` cuts it (as a
    server going away would) and :meth:`start` opens it again on the same port."""

    def __init__(self, target: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target, self.host, self.port = target, host, port
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        """Listen (again) on ``port``; a no-op while listening."""
        if self._listener is not None:
            return
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = int(ls.getsockname()[1])
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), name="sc-relay", daemon=True).start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the relay."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection((self.host, self.target))
            except OSError:
                client.close()  # the server is down: so is the relay's connection
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                with self._lock:
                    if upstream:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop listening and cut every connection."""
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the accept(): close() alone leaves it listening
            except OSError:
                pass
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
