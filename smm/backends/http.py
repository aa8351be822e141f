"""JSON over HTTP for the server backends: deadlines, bounded retries with backoff, one-line errors.

``timeout_s`` is a deadline for the whole answer, not for each read: a server that drips a byte
at a time is cut off when the deadline passes (a watchdog shuts the request's socket down; every
request gets its own connection, so the watchdog always knows the socket). Connection errors,
deadlines, HTTP 429 and 5xx are retried ``retries`` times, waiting ``BACKOFF_S * 2**attempt``
seconds (at most ``MAX_BACKOFF_S``) in between; no retry starts later than ``RETRY_WINDOW_S``
after the first attempt began. Anything else comes back at once. Secrets never appear in
messages: URLs are shown with their password masked and the request headers (which may carry an
API key) are never printed.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from smm.errors import SmmError
from smm.secrets import mask_url

BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
RETRY_WINDOW_S = 300.0
MAX_RETRIES = 10
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ServerUnreachable(SmmError):
    """The server could not be connected to, even after the retries."""


@dataclass
class Reply:
    """An HTTP answer: the status, the parsed JSON body (None if it is not JSON) and the raw text."""

    status: int
    body: Any
    text: str

    def error_detail(self) -> str:
        """The server's own explanation (``{"error": ...}`` of Ollama and OpenAI), else the body."""
        detail: Any = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(detail, dict):
            detail = detail.get("message") or detail
        text = str(detail) if detail else self.text
        return " ".join(text.split())[:300] or f"HTTP {self.status}"


class RequestFailed(Exception):
    """A request that did not get an answer after the retries (timeout, 5xx): fails one case only."""


class _Deadline:
    """Shuts the request's socket down when ``seconds`` have passed (httpx only bounds each read)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict) -> None:
        """httpx's ``trace`` extension: remember the socket once it is connected."""
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            with self._lock:
                self._sock = info["return_value"].get_extra_info("socket")
                if self.fired:
                    self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class JsonClient:
    """A thread-safe JSON client for one server with a pool of ``connections``."""

    def __init__(self, base_url: str, timeout_s: float, retries: int, connections: int = 4,
                 headers: dict[str, str] | None = None) -> None:
        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per request
        self.base_url = base_url.rstrip("/")
        self.shown_url = mask_url(self.base_url)
        self.retries = min(retries, MAX_RETRIES)
        self.timeout_s = timeout_s
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=0),  # see _Deadline
            headers=headers or {},
            trust_env=False,
        )

    def request(self, method: str, path: str, payload: Any = None) -> Reply:
        """Send the request, retrying transient failures; raise ServerUnreachable or RequestFailed."""
        httpx = self._httpx
        last, attempts, first = "", 0, time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                pause = min(BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if time.monotonic() + pause - first > RETRY_WINDOW_S:
                    break
                time.sleep(pause)
            attempts += 1
            deadline = _Deadline(self.timeout_s)
            try:
                response = self._client.request(method, path, json=payload, extensions={"trace": deadline.trace})
            except httpx.ConnectError as exc:
                last = f"connection failed ({_short(exc)})"
                continue
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                timed_out = deadline.fired or isinstance(exc, httpx.TimeoutException)
                last = f"no answer within {self.timeout_s:g} s" if timed_out else f"connection broke ({_short(exc)})"
                continue
            finally:
                deadline.cancel()
            reply = Reply(response.status_code, _json_or_none(response), response.text)
            if reply.status in RETRY_STATUS:
                last = f"HTTP {reply.status}: {reply.error_detail()}"
                continue
            return reply
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if last.startswith("connection failed"):
            raise ServerUnreachable(f"cannot reach {self.shown_url}: {last} after {tries}")
        raise RequestFailed(f"{last} ({tries})")

    def close(self) -> None:
        self._client.close()


def _json_or_none(response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
