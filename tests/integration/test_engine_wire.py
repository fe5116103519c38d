from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlparse

import psycopg
import pytest

# Raw-socket checks of the wire protocol itself, below any driver.


def open_socket(database_url: str) -> socket.socket:
    url = urlparse(database_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", 196608)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def frontend(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_messages_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Backend messages up to and including ReadyForQuery. Reads message by message, never
    past the ReadyForQuery, so a reply that arrived in the same segment waits for the next call."""
    messages: list[tuple[bytes, bytes]] = []
    while True:
        header = _recv_exact(sock, 5)
        if header is None:
            return messages
        length = struct.unpack("!i", header[1:5])[0]
        body = _recv_exact(sock, length - 4)
        if body is None:
            return messages
        messages.append((header[:1], body))
        if header[:1] == b"Z":
            return messages


def send_trickle(sock: socket.socket, data: bytes) -> None:
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        if i % 7 == 0:
            time.sleep(0.001)


def test_messages_split_into_single_bytes_are_framed(database_url: str) -> None:
    with open_socket(database_url) as sock:
        send_trickle(sock, startup_packet(user="postgres", database="postgres"))
        startup = read_messages_until_ready(sock)
        assert startup[0] == (b"R", struct.pack("!i", 0))
        assert startup[-1] == (b"Z", b"I")
        send_trickle(sock, frontend(b"Q", b"select 40 + 2 as answer\0"))
        reply = read_messages_until_ready(sock)
        kinds = [k for k, _ in reply]
        assert kinds == [b"T", b"D", b"C", b"Z"]
        data_row = reply[1][1]
        assert data_row.endswith(b"42")


def test_ssl_request_is_declined_and_plain_startup_follows(database_url: str) -> None:
    with open_socket(database_url) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"N"
        sock.sendall(startup_packet(user="postgres"))
        assert read_messages_until_ready(sock)[-1] == (b"Z", b"I")
        sock.sendall(frontend(b"X", b""))
        assert sock.recv(1) == b""


def test_several_messages_in_one_chunk(database_url: str) -> None:
    with open_socket(database_url) as sock:
        sock.sendall(startup_packet(user="postgres"))
        read_messages_until_ready(sock)
        sock.sendall(frontend(b"Q", b"select 1\0") + frontend(b"Q", b"select 2\0"))
        first = read_messages_until_ready(sock)
        second = read_messages_until_ready(sock)
        assert first[1][1].endswith(b"1") and second[1][1].endswith(b"2")


def test_sslmode_prefer_connects_and_require_is_refused(database_url: str) -> None:
    plain = database_url.split("?")[0]
    with psycopg.connect(plain + "?sslmode=prefer") as c:
        assert c.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(plain + "?sslmode=require", connect_timeout=10)


def test_malformed_length_gets_a_protocol_error(database_url: str, database_backend: str) -> None:
    if database_backend != "embedded":
        pytest.skip("checks the embedded engine's own error text")
    with open_socket(database_url) as sock:
        sock.sendall(startup_packet(user="postgres"))
        read_messages_until_ready(sock)
        sock.sendall(b"Q" + struct.pack("!i", 2))
        reply = read_messages_until_ready(sock)
        assert reply[0][0] == b"E"
        assert b"08P01" in reply[0][1]
        assert sock.recv(1) == b""
    with psycopg.connect(database_url) as c:
        assert c.execute("select 1").fetchone() == (1,)


def parse_bind_execute(sql: str) -> bytes:
    return (
        frontend(b"P", b"\0" + sql.encode() + b"\0\0\0")
        + frontend(b"B", b"\0\0" + b"\0\0\0\0\0\0")
        + frontend(b"E", b"\0" + b"\0\0\0\0")
    )


def test_disconnect_mid_exchange_rolls_back(database_url: str, database_backend: str) -> None:
    table = f"wire_{int(time.time() * 1000)}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"create table {table} (id int)")
        try:
            with open_socket(database_url) as sock:
                sock.sendall(startup_packet(user="postgres"))
                read_messages_until_ready(sock)
                sock.sendall(
                    parse_bind_execute(f"insert into {table} values (1)") + frontend(b"H", b"")
                )
                if database_backend == "embedded":
                    # The engine runs the batch at Flush: the insert has happened before we go.
                    deadline = time.monotonic() + 10
                    received = b""
                    while b"INSERT" not in received and time.monotonic() < deadline:
                        received += sock.recv(65536)
                    assert b"INSERT" in received
                else:
                    time.sleep(0.5)
            time.sleep(0.5)
            assert c.execute(f"select count(*) from {table}").fetchone()[0] == 0
        finally:
            c.execute(f"drop table {table}")


def test_startup_and_query_in_one_write(database_url: str) -> None:
    with open_socket(database_url) as sock:
        sock.sendall(startup_packet(user="postgres") + frontend(b"Q", b"select 7\0"))
        assert read_messages_until_ready(sock)[-1] == (b"Z", b"I")
        reply = read_messages_until_ready(sock)
        assert [k for k, _ in reply] == [b"T", b"D", b"C", b"Z"]
