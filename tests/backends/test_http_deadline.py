"""eval.timeout_s is a deadline for the whole answer: a server that drips bytes (in the body or
in the headers) is cut off when it passes, and retries are bounded."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from smm.backends.http import MAX_RETRIES, JsonClient, RequestFailed

BODY = b'{"message": {"role": "assistant", "content": "' + b"x" * 60 + b'"}}'


class DrippingServer:
    """Loopback only: answers every connection one byte every ``interval_s``, at most ``max_s`` long."""

    def __init__(self, where: str, interval_s: float = 0.2, max_s: float = 15.0) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        self.fast, self.slow = (head, BODY) if where == "body" else (b"", head + BODY)
        self.interval_s, self.max_s = interval_s, max_s
        self.connections = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        start = time.monotonic()
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.fast)
                for i in range(len(self.slow)):
                    if self.stop.is_set() or time.monotonic() - start > self.max_s:
                        return
                    conn.sendall(self.slow[i:i + 1])
                    time.sleep(self.interval_s)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=2)


@pytest.fixture
def dripping():
    servers = []

    def start(where: str) -> DrippingServer:
        servers.append(DrippingServer(where))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_server_is_cut_off_at_the_deadline(dripping, where):
    server = dripping(where)  # every read gets a byte within 0.2 s: a per-read timeout never fires
    client = JsonClient(server.url, timeout_s=1.0, retries=1)
    start = time.monotonic()
    with pytest.raises(RequestFailed) as err:
        client.request("POST", "/api/chat", {"model": "m"})
    elapsed = time.monotonic() - start
    client.close()
    assert str(err.value) == "no answer within 1 s (2 attempts)"
    assert server.connections == 2 and elapsed < 4.0  # 2 × 1 s + one backoff, not the 20+ s of dripping


def test_an_answer_within_the_deadline_is_not_cut(dripping):
    server = dripping("body")
    server.interval_s = 0.001
    client = JsonClient(server.url, timeout_s=5.0, retries=0)
    reply = client.request("POST", "/api/chat", {})
    client.close()
    assert reply.status == 200 and reply.body["message"]["content"] == "x" * 60


def test_retries_are_bounded_in_number_and_time(dripping, monkeypatch):
    assert JsonClient("http://127.0.0.1:9", 1.0, retries=10 ** 12).retries == MAX_RETRIES
    monkeypatch.setattr("smm.backends.http.RETRY_WINDOW_S", 1.6)
    monkeypatch.setattr("smm.backends.http.BACKOFF_S", 0.01)
    server = dripping("body")
    client = JsonClient(server.url, timeout_s=0.6, retries=10)
    start = time.monotonic()
    with pytest.raises(RequestFailed, match=r"no answer within 0.6 s \(3 attempts\)"):
        client.request("POST", "/api/chat", {})
    client.close()
    assert time.monotonic() - start < 3.0
