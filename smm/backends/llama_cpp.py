"""A GGUF file in-process through llama-cpp-python (one request at a time).

The chat template is the one stored in the GGUF (``tokenizer.chat_template``, which the export
stage fills from smm/chat.py), so prompts are rendered exactly as Ollama renders them. A GGUF
without a template falls back to ChatML, Qwen2.5's format, with a warning.

A JSON schema becomes a llama.cpp grammar (GBNF) with llama-cpp-python's own converter, plus what
it gets wrong or leaves out for the task schemas: its string characters allow raw control
characters (a tab or newline inside a string is not JSON), so smm uses llama.cpp's own rule
(as in its C++ converter, which Ollama uses), and numbers bounded by whole-number ``minimum`` and
``maximum`` (the sentiment score, -1..1) are spelled out. The grammar is checked by llama.cpp's parser once per
schema before it is used, so a schema it cannot handle is a one-line error, not a crash.
Generation uses every core this process may run on unless ``threads`` says otherwise.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from smm.backends import Generation, GenerationSettings, Messages, Schema, timed
from smm.cpus import available_cores
from smm.errors import SmmError

log = logging.getLogger(__name__)
MAX_BOUNDED_SPAN = 100
"""Largest ``maximum - minimum`` whose number range is spelled out in the grammar."""
_FRACTION = '("." [0-9]{1,15})?'
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
"""One character of a JSON string (llama.cpp's common/json-schema-to-grammar.cpp)."""
_ZEROS = '("." "0"{1,15})?'


def bounded_number_rule(low: int, high: int) -> str:
    """GBNF for a JSON number ``x`` with ``low <= x <= high`` (whole-number bounds, no exponent)."""
    alternatives = [f'"{n}" {_FRACTION}' for n in range(max(low, 0), high)]  # [n, n+1)
    if high >= max(low, 0):
        alternatives.append(f'"{high}" {_ZEROS}')
    alternatives += [f'"-{m}" {_FRACTION}' for m in range(max(-high, 0), -low)]  # (-(m+1), -m]
    if low < 0:
        alternatives.append(f'"-{-low}" {_ZEROS}')
    return "(" + " | ".join(alternatives) + ") space"


def _whole(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        return None
    return int(value)


def schema_grammar(schema: Schema) -> str:
    """The GBNF grammar of ``schema`` (llama-cpp-python's converter + bounded numbers)."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def visit(self, schema, name):
            low, high = _whole(schema.get("minimum")), _whole(schema.get("maximum"))
            if schema.get("type") == "number" and low is not None and high is not None and 0 <= high - low <= MAX_BOUNDED_SPAN:
                return self._add_rule(name or "root", bounded_number_rule(low, high))
            return super().visit(schema, name)

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(json.loads(json.dumps(schema)), "schema"), "")
    if "char" in converter._rules:
        converter._rules["char"] = JSON_CHAR
    return converter.format_grammar()


class LlamaCppBackend:
    max_workers = 1
    can_constrain = True

    def __init__(self, model_path: str, settings: GenerationSettings, n_ctx: int = 4096, threads: int = 0) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise SmmError(
                f"eval.model_path: {model_path} not found; export the model first "
                "(python run.py stage=export) or point eval.model_path at a .gguf file"
            )
        from llama_cpp import Llama

        self.settings = settings
        self.label = f"llama_cpp:{path.name}"
        self.threads = threads or available_cores()
        self._grammars: dict[str, object] = {}
        try:
            self.llm = Llama(str(path), n_ctx=n_ctx, seed=settings.seed, n_threads=self.threads,
                             n_threads_batch=self.threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise SmmError(f"eval.model_path: llama.cpp cannot load {model_path} ({exc}); is it a GGUF file?") from None
        if not self.llm.metadata.get("tokenizer.chat_template"):
            log.warning("%s has no chat template; using ChatML", path.name)
            self.llm.chat_format = "chatml"
            self.llm.chat_handler = None

    def grammar(self, schema: Schema):
        """The (cached) LlamaGrammar for ``schema``, checked by llama.cpp's grammar parser."""
        import llama_cpp
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                text = schema_grammar(schema)
            except Exception as exc:  # noqa: BLE001 - the converter raises AssertionError/ValueError/KeyError
                raise SmmError(f"llama.cpp cannot turn the JSON schema into a grammar ({exc})") from None
            sampler = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, text.encode(), b"root")
            if not sampler:
                raise SmmError("llama.cpp's grammar parser rejects the grammar made from the JSON schema")
            llama_cpp.llama_sampler_free(sampler)
            self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[key]

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation:
        grammar = self.grammar(schema) if schema is not None else None

        def run() -> tuple[str, int | None, bool]:
            result = self.llm.create_chat_completion(
                messages=messages,
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
                seed=self.settings.seed,
                grammar=grammar,
            )
            choice = result["choices"][0]
            return choice["message"]["content"] or "", result["usage"]["completion_tokens"], choice.get("finish_reason") == "length"

        try:
            return timed(run)
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            return Generation(None, 0.0, error=f"llama.cpp: {exc}")

    def close(self) -> None:
        self.llm.close()
