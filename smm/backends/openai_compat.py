"""Any OpenAI-compatible server: ``/v1/chat/completions`` (Ollama's /v1, llama.cpp's server, vLLM, ...).

``eval.url`` may end in ``/v1`` or not. The API key, if the server needs one, is read from the
environment variable named by ``eval.api_key_env`` when the client is made and sent only as a
request header; it never enters the config, logs or reports. If the server lists its models
(``GET /v1/models``), ``eval.model`` must be one of them (``name`` matches Ollama's ``name:latest``).
"""
from __future__ import annotations

import os
import time

from smm.backends import Generation, GenerationSettings, Messages, same_model
from smm.backends.http import JsonClient, RequestFailed, ServerUnreachable
from smm.errors import ConfigError, SmmError
from smm.secrets import mask_url


class OpenAIBackend:
    def __init__(self, url: str, model: str, settings: GenerationSettings, concurrency: int = 4,
                 api_key_env: str = "OPENAI_API_KEY") -> None:
        self.model = model
        self.settings = settings
        self.max_workers = concurrency
        self.label = f"openai:{model}"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key and "@" in url.partition("://")[2].split("/", 1)[0]:
            # httpx would turn the URL's user info into an Authorization header in place of the key
            raise ConfigError(f"eval.url {mask_url(url)} carries credentials and ${api_key_env} holds an API key; "
                              "give only one of them")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        base = url.rstrip("/")
        self.prefix = "" if base.endswith("/v1") else "/v1"
        self.client = JsonClient(base, settings.timeout_s, settings.retries, concurrency, headers)
        self._check_model()

    def _unreachable(self, exc: Exception) -> SmmError:
        return SmmError(
            f"{exc}; is the server running? e.g. `python -m llama_cpp.server --model <file.gguf> "
            "--model_alias <name>` or `ollama serve` (and set eval.url to its address)"
        )

    def _rejected(self, status: int) -> SmmError:
        have = "the key in" if os.environ.get(self.api_key_env) else "no key in"
        return SmmError(f"{self.client.shown_url} refused the request (HTTP {status}) with {have} ${self.api_key_env}; set the right API key there (eval.api_key_env names the variable)")

    def _check_model(self) -> None:
        try:
            reply = self.client.request("GET", f"{self.prefix}/models")
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from None
        except RequestFailed as exc:
            raise SmmError(f"{self.client.shown_url} did not list its models: {exc}") from None
        if reply.status in (401, 403):
            raise self._rejected(reply.status)
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        if reply.status != 200 or not isinstance(data, list):
            return  # the server does not list models: let the first request tell
        served = [str(m.get("id")) for m in data if isinstance(m, dict)]
        if served and not any(same_model(self.model, name) for name in served):
            raise SmmError(
                f"model {self.model!r} is not served at {self.client.shown_url} (it serves: {', '.join(served)}); "
                "set eval.model to one of them"
            )

    def generate(self, messages: Messages) -> Generation:
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "seed": self.settings.seed,
            "stream": False,
        }
        start = time.perf_counter()
        try:
            reply = self.client.request("POST", f"{self.prefix}/chat/completions", payload)
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from None
        except RequestFailed as exc:
            return Generation(None, time.perf_counter() - start, error=str(exc))
        latency = time.perf_counter() - start
        if reply.status in (401, 403):
            raise self._rejected(reply.status)
        if reply.status == 404 and "model" in reply.error_detail().lower():
            raise SmmError(f"{self.client.shown_url}: {reply.error_detail()} (set eval.model to a model the server has)")
        if reply.status != 200:
            return Generation(None, latency, error=f"HTTP {reply.status}: {reply.error_detail()}")
        try:
            content = reply.body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            return Generation(None, latency, error=f"malformed reply (no choices[0].message.content): {reply.text[:200]!r}")
        usage = reply.body.get("usage") if isinstance(reply.body.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        return Generation(content, latency, tokens if isinstance(tokens, int) else None)

    def close(self) -> None:
        self.client.close()
