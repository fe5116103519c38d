from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class FaultProxy:
    """A TCP relay in front of the database that can fail the way a server does.

    cut(): every connection is closed and new ones are refused, as when the server is stopped.
    freeze(): connections stay open and new ones are accepted, but no byte moves in either
    direction, as when the server process is stopped with SIGSTOP (its kernel still speaks TCP).
    heal(): back to relaying.
    """

    def __init__(self, database_url: str) -> None:
        params = conninfo_to_dict(database_url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._target: tuple[int, str | tuple[str, int]] = (
                socket.AF_UNIX,
                f"{host}/.s.PGSQL.{port}",
            )
        else:
            self._target = (socket.AF_INET, (host, port))
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.url = make_conninfo(database_url, host="127.0.0.1", port=str(self.port))
        self._state = "relay"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            self._state = "cut"
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def freeze(self) -> None:
        with self._lock:
            self._state = "freeze"

    def heal(self) -> None:
        with self._lock:
            self._state = "relay"

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                state = self._state
            if state == "cut":
                client.close()
                continue
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            try:
                server.connect(address)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        try:
            while not self._closed.is_set():
                with self._lock:
                    state = self._state
                if state == "cut":
                    return
                if state == "freeze":
                    self._closed.wait(0.05)
                    continue
                for key, _ in selector.select(timeout=0.05):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def fault_proxy(database_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(database_url)
    try:
        yield proxy
    finally:
        proxy.close()
