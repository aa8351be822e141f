"""Ollama's native API: ``GET /api/tags`` to find the model, ``POST /api/chat`` to ask it.

Requests are non-streaming; ``options`` carries temperature, seed and ``num_predict`` (max
tokens). ``format`` is set only when a schema is given (structured outputs: Ollama turns the JSON
schema into a grammar), so free generation measures the model's own JSON discipline. Tokens per
second come from Ollama's ``eval_count / eval_duration``; ``done_reason == "length"`` marks an
answer cut off at ``num_predict``.
"""
from __future__ import annotations

import time

from smm.backends import Generation, GenerationSettings, Messages, Schema, same_model
from smm.backends.http import JsonClient, RequestFailed, ServerUnreachable
from smm.errors import SmmError


class OllamaBackend:
    can_constrain = True

    def __init__(self, url: str, model: str, settings: GenerationSettings, concurrency: int = 4,
                 modelfile: str = "output/gguf/Modelfile") -> None:
        self.model = model
        self.modelfile = modelfile
        self.settings = settings
        self.max_workers = concurrency
        self.label = f"ollama:{model}"
        self.client = JsonClient(url, settings.timeout_s, settings.retries, concurrency)
        self._check_model()

    def _unreachable(self, exc: Exception) -> SmmError:
        return SmmError(f"{exc}; is Ollama running? Start it with `ollama serve` (or set eval.url)")

    def _missing_model(self, available: list[str] | None = None) -> SmmError:
        have = f" (it has: {', '.join(available)})" if available else ""
        return SmmError(
            f"model {self.model!r} is not on the Ollama server at {self.client.shown_url}{have}; "
            f"register it with `python run.py stage=export export.register=true` or "
            f"`ollama create {self.model} -f {self.modelfile}`; `ollama list` shows what is there"
        )

    def _check_model(self) -> None:
        try:
            reply = self.client.request("GET", "/api/tags")
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from None
        except RequestFailed as exc:
            raise SmmError(f"Ollama at {self.client.shown_url} did not list its models: {exc}") from None
        models = reply.body.get("models") if isinstance(reply.body, dict) else None
        if reply.status != 200 or not isinstance(models, list):
            raise SmmError(
                f"{self.client.shown_url} does not answer like Ollama (GET /api/tags: HTTP {reply.status}); "
                "for an OpenAI-compatible server use eval.backend=openai"
            )
        names = [str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict)]
        if not any(same_model(self.model, n) for n in names):
            raise self._missing_model(names)

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation:
        payload = {
            "model": self.model,
            "messages": messages,
            "stream": False,
            "options": {
                "temperature": self.settings.temperature,
                "seed": self.settings.seed,
                "num_predict": self.settings.max_tokens,
            },
        }
        if self.settings.repeat_penalty is not None:
            payload["options"]["repeat_penalty"] = self.settings.repeat_penalty
        if schema is not None:
            payload["format"] = schema
        start = time.perf_counter()
        try:
            reply = self.client.request("POST", "/api/chat", payload)
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from None
        except RequestFailed as exc:
            return Generation(None, time.perf_counter() - start, error=str(exc))
        latency = time.perf_counter() - start
        if reply.status == 404 and "not found" in reply.error_detail():
            raise self._missing_model()
        if reply.status != 200:
            return Generation(None, latency, error=f"HTTP {reply.status}: {reply.error_detail()}")
        body = reply.body if isinstance(reply.body, dict) else {}
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            return Generation(None, latency, error=f"malformed reply from Ollama (no message.content): {reply.text[:200]!r}")
        count, duration = body.get("eval_count"), body.get("eval_duration")
        tokens = count if isinstance(count, int) else None
        speed = count / duration * 1e9 if tokens and isinstance(duration, (int, float)) and duration > 0 else None
        return Generation(content, latency, tokens, speed, truncated=body.get("done_reason") == "length")

    def close(self) -> None:
        self.client.close()
