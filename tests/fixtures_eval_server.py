"""A local HTTP server speaking Ollama's documented API (``GET /api/tags``, ``POST /api/chat``) and
the OpenAI chat API (``GET /v1/models``, ``POST /v1/chat/completions``), for the evaluate tests and
bench/eval_concurrency.py.

Answers come from a callable ``answer(messages) -> str`` per model. ``script`` queues misbehaviour
for the next chat requests: ``500`` (server error), ``"malformed"`` (200 with a non-JSON body),
``"no_content"`` (200, JSON without the message), ``"hang"`` (answers after ``hang_s``), ``"length"``
(the answer reported as cut off: ``done_reason``/``finish_reason`` ``length``), ``"odd_reason"``
(a ``done_reason``/``finish_reason`` that is not a string). Every chat
request sleeps ``delay_s`` first; the server serves requests in parallel (one thread each) and
records the most it had in flight. A request that carries a schema (Ollama ``format``, OpenAI
``response_format``) is answered by ``constrained_answers[model]`` when there is one;
``reject_json_schema`` makes ``/v1`` refuse ``response_format`` type ``json_schema`` the way
llama-cpp-python's server does (HTTP 422 naming ``json_object``).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

Answer = Callable[[list], str]


class StubLLMServer:
    def __init__(self, answers: dict[str, Answer], delay_s: float = 0.0, api_key: str | None = None) -> None:
        self.answers = answers
        """model name (Ollama style, with tag) → answer function."""
        self.delay_s = delay_s
        self.hang_s = 5.0
        self.constrained_answers: dict[str, Answer] = {}
        self.reject_json_schema = False
        self.api_key = api_key
        self.script: list = []
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "StubLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] in ("/api/chat", "/v1/chat/completions")]

    # --- used by the handler ---
    def next_behaviour(self):
        with self._lock:
            return self.script.pop(0) if self.script else None

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def find(self, model: str) -> Answer | None:
        return self.answers.get(model) or self.answers.get(f"{model}:latest")


def _handler(server: StubLLMServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body, raw: bool = False) -> None:
            data = body.encode() if raw else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            server.requests.append({"path": self.path, "headers": dict(self.headers)})
            if self.path == "/api/tags":
                models = [{"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1,
                           "digest": "0" * 64, "details": {"format": "gguf", "family": "qwen2"}} for m in server.answers]
                self._send(200, {"models": models})
            elif self.path == "/v1/models":
                if not self._authorized():
                    return
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "stub"} for m in server.answers]})
            else:
                self._send(404, "404 page not found", raw=True)

        def _authorized(self) -> bool:
            if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
                return False
            return True

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path not in ("/api/chat", "/v1/chat/completions"):
                return self._send(404, "404 page not found", raw=True)
            if self.path.startswith("/v1") and not self._authorized():
                return
            response_format = body.get("response_format") or {}
            if server.reject_json_schema and isinstance(response_format, dict) and response_format.get("type") == "json_schema":
                return self._send(422, {"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                                                    "msg": "Input should be 'text' or 'json_object'", "input": "json_schema"}]})
            server.enter()
            try:
                self._chat(body)
            finally:
                server.leave()

        def _chat(self, body: dict) -> None:
            behaviour = server.next_behaviour()
            time.sleep(server.hang_s if behaviour == "hang" else server.delay_s)
            if behaviour == 500:
                return self._send(500, {"error": "model runner has unexpectedly stopped"})
            if behaviour == "malformed":
                return self._send(200, "<html>proxy error</html>", raw=True)
            answer = server.find(body.get("model", ""))
            constrained = "format" in body or "response_format" in body
            if constrained and body.get("model", "") in server.constrained_answers:
                answer = server.constrained_answers[body["model"]]
            if answer is None:
                return self._send(404, {"error": f"model '{body.get('model')}' not found, try pulling it first"})
            text = answer(body["messages"])
            tokens = len(text.split())
            if self.path == "/api/chat":
                reply = {"model": body["model"], "created_at": "2025-01-01T00:00:00Z", "done": True,
                         "done_reason": _reason(behaviour), "total_duration": 1_000_000, "eval_count": tokens,
                         "eval_duration": 500_000_000}
                if behaviour != "no_content":
                    reply["message"] = {"role": "assistant", "content": text}
            else:
                reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": tokens + 10}}
                if behaviour != "no_content":
                    reply["choices"] = [{"index": 0, "finish_reason": _reason(behaviour), "message": {"role": "assistant", "content": text}}]
            self._send(200, reply)

    return Handler


def _reason(behaviour) -> object:
    return {"length": "length", "odd_reason": ["length"]}.get(behaviour, "stop")


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubLLMServer]]:
    """A factory ``start(answers, delay_s=0, api_key=None)`` of running stub servers, stopped afterwards."""
    started: list[StubLLMServer] = []

    def start(answers: dict[str, Answer], **kwargs) -> StubLLMServer:
        started.append(StubLLMServer(answers, **kwargs).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()
