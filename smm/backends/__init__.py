"""Inference clients for the evaluate stage: one interface over Ollama, OpenAI-compatible servers,
llama.cpp in-process and transformers.

A backend answers one conversation at a time with :meth:`Backend.generate`; :func:`generate_all`
runs many cases through it (concurrently for HTTP backends). Every backend uses the same
:class:`GenerationSettings`. Given a JSON schema, a backend that ``can_constrain`` makes the answer
follow it through the server's own mechanism (Ollama ``format``, OpenAI ``response_format``, a
llama.cpp grammar in-process); ``Generation.truncated`` says the answer hit ``max_tokens``. A problem that concerns the whole run (server down, model missing,
key rejected) raises :class:`~smm.errors.SmmError`; a problem with one answer (timeout after the
retries, malformed reply, a 4xx/5xx for that prompt) comes back as ``Generation.error`` and is
scored as a failed case.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from smm.errors import ConfigError, SmmError

Messages = list[dict[str, str]]
Schema = dict[str, Any]
MODES = {"off": ("free",), "on": ("constrained",), "both": ("free", "constrained")}
"""``eval.constrained`` / ``chat.constrained`` → the answer modes, the first being the main one."""


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and transport settings shared by every backend (from the ``eval`` config group)."""

    temperature: float = 0.2
    max_tokens: int = 768
    seed: int = 0
    timeout_s: float = 120.0
    retries: int = 2
    repeat_penalty: float | None = None
    """None = the backend's own default (Ollama: the Modelfile's)."""

    @classmethod
    def from_config(cls, eval_cfg) -> "GenerationSettings":
        return cls(eval_cfg.temperature, eval_cfg.max_tokens, eval_cfg.seed, eval_cfg.timeout_s, eval_cfg.retries,
                   eval_cfg.repeat_penalty)


@dataclass
class Generation:
    """One answer (or why there is none), with its timing."""

    text: str | None
    latency_s: float
    output_tokens: int | None = None
    tokens_per_s: float | None = None
    error: str | None = None
    truncated: bool = False
    """The answer stopped at ``max_tokens`` (finish_reason / done_reason ``length``)."""

    def __post_init__(self) -> None:
        if self.tokens_per_s is None and self.output_tokens and self.latency_s > 0:
            self.tokens_per_s = self.output_tokens / self.latency_s


class Backend(Protocol):
    label: str
    """What is evaluated, for reports: ``ollama:social-media-marketer``, ``llama_cpp:model.gguf``."""
    max_workers: int
    """Requests it can serve at once (1 for in-process backends)."""
    can_constrain: bool
    """Whether ``generate(..., schema=...)`` enforces the schema (False: it cannot, e.g. hf)."""

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation: ...

    def close(self) -> None: ...


def same_model(wanted: str, name: str) -> bool:
    """Model names as Ollama compares them (also through its OpenAI-compatible ``/v1``): a name
    without a tag means the ``latest`` tag, so ``smm`` is ``smm:latest``."""
    def full(n: str) -> str:
        return n if ":" in n.rsplit("/", 1)[-1] else f"{n}:latest"
    return full(wanted) == full(name)


def timed(fn: Callable[[], tuple[str, int | None, bool]]) -> Generation:
    """Run an in-process generation ``fn() -> (text, output_tokens, truncated)`` and time it."""
    start = time.perf_counter()
    text, tokens, truncated = fn()
    return Generation(text, time.perf_counter() - start, tokens, truncated=truncated)


def generate_all(backend: Backend, conversations: Sequence[Messages], on_done: Callable[[int, Generation], None] = lambda i, g: None,
                 schemas: Sequence[Schema | None] | None = None) -> list[Generation]:
    """Answers to every conversation, in order, with up to ``backend.max_workers`` in flight (or
    ``backend.batch_size`` at once, for a backend with ``generate_batch``); ``schemas[i]`` constrains answer ``i``; ``on_done(i, generation)`` is called as each one ends."""
    def one(i: int) -> Generation:
        generation = backend.generate(conversations[i], schemas[i] if schemas else None)
        on_done(i, generation)
        return generation

    if getattr(backend, "batch_size", 1) > 1:
        return _generate_batched(backend, conversations, on_done, schemas)
    if backend.max_workers <= 1:
        return [one(i) for i in range(len(conversations))]
    with ThreadPoolExecutor(max_workers=backend.max_workers, thread_name_prefix="smm-eval") as pool:
        futures = [pool.submit(one, i) for i in range(len(conversations))]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _generate_batched(backend: Backend, conversations: Sequence[Messages], on_done: Callable[[int, Generation], None],
                      schemas: Sequence[Schema | None] | None) -> list[Generation]:
    """:func:`generate_all` for a backend that answers ``backend.batch_size`` conversations at once:
    conversations of similar length are batched together, so little of a batch is padding."""
    size = backend.batch_size
    order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
    answers: list[Generation | None] = [None] * len(conversations)
    for start in range(0, len(order), size):
        batch = order[start:start + size]
        generations = backend.generate_batch([conversations[i] for i in batch], [schemas[i] if schemas else None for i in batch])
        for i, generation in zip(batch, generations):
            answers[i] = generation
            on_done(i, generation)
    return answers


def check_can_constrain(kind: str, constrained: str, key: str = "eval.constrained") -> None:
    """A one-line error, before any model loads, when backend ``kind`` cannot constrain answers."""
    if constrained != "off" and kind == "hf":
        raise ConfigError(
            f"{key}={constrained}: the hf backend cannot constrain answers to a JSON schema; "
            f"use eval.backend=llama_cpp, ollama or openai, or {key}=off"
        )


def make_backend(kind: str, eval_cfg, *, model: str | None = None, model_path: str | None = None,
                 model_cfg=None, modelfile: str = "output/gguf/Modelfile") -> Backend:
    """The backend ``kind`` for ``eval_cfg``; ``model``/``model_path`` override the config's (baselines).

    ``model_cfg`` (the ``model`` group) is needed by ``hf``; ``modelfile`` is named in Ollama's hints.
    """
    settings = GenerationSettings.from_config(eval_cfg)
    if kind == "ollama":
        from smm.backends.ollama import OllamaBackend

        return OllamaBackend(eval_cfg.url, model or eval_cfg.model, settings, eval_cfg.concurrency, modelfile)
    if kind == "openai":
        from smm.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(eval_cfg.url, model or eval_cfg.model, settings, eval_cfg.concurrency, eval_cfg.api_key_env)
    if kind == "llama_cpp":
        from smm.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(model_path or eval_cfg.model_path, settings, eval_cfg.n_ctx, eval_cfg.threads)
    if kind == "hf":
        from smm.backends.hf import HFBackend

        return HFBackend(eval_cfg.adapter_dir, model_cfg, settings, eval_cfg.batch_size)
    raise SmmError(f"eval.backend: unknown backend {kind!r} (use ollama, openai, llama_cpp or hf)")
