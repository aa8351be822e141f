"""Any OpenAI-compatible server: ``/v1/chat/completions`` (Ollama's /v1, llama.cpp's server, vLLM, ...).

``eval.url`` may end in ``/v1`` or not. The API key, if the server needs one, is read from the
environment variable named by ``eval.api_key_env`` when the client is made and sent only as a
request header; it never enters the config, logs or reports. If the server lists its models
(``GET /v1/models``), ``eval.model`` must be one of them (``name`` matches Ollama's ``name:latest``).

A schema goes out as OpenAI's ``response_format={"type": "json_schema", "json_schema": {...}}``;
a server that rejects that type naming ``json_object`` (llama-cpp-python's server) is asked again
in its own dialect, ``{"type": "json_object", "schema": ...}``, for the rest of the run.
``finish_reason == "length"`` marks an answer cut off at ``max_tokens``.
"""
from __future__ import annotations

import logging
import os
import time

from smm.backends import Generation, GenerationSettings, Messages, Schema, same_model
from smm.backends.http import JsonClient, RequestFailed, ServerUnreachable
from smm.errors import ConfigError, SmmError
from smm.secrets import mask_url

log = logging.getLogger(__name__)


def response_format(schema: Schema, style: str = "json_schema", name: str = "answer") -> dict:
    """OpenAI's structured-output request field for ``schema``; ``json_object`` is
    llama-cpp-python's server dialect (``{"type": "json_object", "schema": ...}``)."""
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


class OpenAIBackend:
    can_constrain = True

    def __init__(self, url: str, model: str, settings: GenerationSettings, concurrency: int = 4,
                 api_key_env: str = "OPENAI_API_KEY") -> None:
        self.model = model
        self.settings = settings
        self.max_workers = concurrency
        self.label = f"openai:{model}"
        self.api_key_env = api_key_env
        self.format_style = "json_schema"
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

    def _post(self, payload: dict):
        try:
            return self.client.request("POST", f"{self.prefix}/chat/completions", payload)
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from None

    def _post_constrained(self, payload: dict, schema: Schema):
        """POST with the schema; once a server refuses ``json_schema`` naming ``json_object``
        (llama-cpp-python's server answers HTTP 500 or 422), use that dialect from then on."""
        if self.format_style == "json_schema":
            try:
                reply = self._post(payload)
                refused = reply.status in (400, 422, 500) and _names_the_dialect(reply.text)
            except RequestFailed as exc:
                if not _names_the_dialect(str(exc)):
                    raise
                refused = True
            if not refused:
                return reply
            log.info("%s does not take response_format type json_schema; sending its json_object dialect",
                     self.client.shown_url)
            self.format_style = "json_object"
        return self._post({**payload, "response_format": response_format(schema, self.format_style)})

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation:
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "seed": self.settings.seed,
            "stream": False,
        }
        if schema is not None:
            payload["response_format"] = response_format(schema, self.format_style)
        start = time.perf_counter()
        try:
            reply = self._post_constrained(payload, schema) if schema is not None else self._post(payload)
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
            choice = reply.body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            choice, content = {}, None
        if not isinstance(content, str):
            return Generation(None, latency, error=f"malformed reply (no choices[0].message.content): {reply.text[:200]!r}")
        usage = reply.body.get("usage") if isinstance(reply.body.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        truncated = isinstance(choice, dict) and choice.get("finish_reason") == "length"
        return Generation(content, latency, tokens if isinstance(tokens, int) else None, truncated=truncated)

    def close(self) -> None:
        self.client.close()


def _names_the_dialect(text: str) -> bool:
    """A refusal of ``response_format`` type ``json_schema`` that names ``json_object``."""
    return "response_format" in text and "json_object" in text
