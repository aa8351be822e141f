"""A GGUF file in-process through llama-cpp-python (one request at a time).

The chat template is the one stored in the GGUF (``tokenizer.chat_template``, which the export
stage fills from smm/chat.py), so prompts are rendered exactly as Ollama renders them. A GGUF
without a template falls back to ChatML, Qwen2.5's format, with a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path

from smm.backends import Generation, GenerationSettings, Messages, timed
from smm.errors import SmmError

log = logging.getLogger(__name__)


class LlamaCppBackend:
    max_workers = 1

    def __init__(self, model_path: str, settings: GenerationSettings, n_ctx: int = 4096) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise SmmError(
                f"eval.model_path: {model_path} not found; export the model first "
                "(python run.py stage=export) or point eval.model_path at a .gguf file"
            )
        from llama_cpp import Llama

        self.settings = settings
        self.label = f"llama_cpp:{path.name}"
        try:
            self.llm = Llama(str(path), n_ctx=n_ctx, seed=settings.seed, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise SmmError(f"eval.model_path: llama.cpp cannot load {model_path} ({exc}); is it a GGUF file?") from None
        if not self.llm.metadata.get("tokenizer.chat_template"):
            log.warning("%s has no chat template; using ChatML", path.name)
            self.llm.chat_format = "chatml"
            self.llm.chat_handler = None

    def generate(self, messages: Messages) -> Generation:
        def run() -> tuple[str, int | None]:
            result = self.llm.create_chat_completion(
                messages=messages,
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
                seed=self.settings.seed,
            )
            return result["choices"][0]["message"]["content"] or "", result["usage"]["completion_tokens"]

        try:
            return timed(run)
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            return Generation(None, 0.0, error=f"llama.cpp: {exc}")

    def close(self) -> None:
        self.llm.close()
