"""stage=chat: talk to a model with a task's system prompt and see whether each answer passes.

The model is reached through the evaluate backends (``eval.backend``: a GGUF in-process, base +
adapter, Ollama, an OpenAI-compatible server, with the ``eval`` group's settings). Each message is
sent with ``chat.task``'s system prompt from the task registry; the answer is printed with the
verdict of the task's checks for ``chat.language`` and ``chat.platform``. ``chat.prompt`` asks one
message; without it, messages are read from stdin, one per line, until an empty line or EOF (bytes
that are not UTF-8 become U+FFFD).
``chat.constrained`` (default: ``eval.constrained``) constrains answers to the task's JSON schema;
``both`` answers each message twice.

Returns the mean check score of the answers.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from smm.backends import MODES, Backend, check_can_constrain, make_backend
from smm.eval.checks import NA, PASS, check_reply
from smm.eval.cases import EvalCase
from smm.serving import answer_schema
from smm.strict_json import replace_lone_surrogates


def _messages(prompt: str | None) -> Iterator[str]:
    if prompt is not None:
        yield prompt
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.buffer.readline().decode("utf-8", errors="replace")  # bytes that are not UTF-8 → U+FFFD
        if not line.strip():
            return
        yield line.strip()


# What a terminal would act on instead of showing (ECMA-48 escape sequences, C0/C1 controls).
_TERMINAL_CONTROL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: clear screen, cursor moves, colours
    r"|(?:\x1b[\]P^_X]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC (window title), DCS, ...
    r"|\x1b[ -~]?"  # any other ESC sequence (ESC c resets the terminal)
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # every other control character but \t and \n
)


def for_terminal(text: str) -> str:
    """A server's text made safe to print: no terminal escape sequences or control characters (a
    reply cannot clear the screen, set the window title or colour what follows), and each lone
    surrogate (not UTF-8) becomes U+FFFD."""
    return _TERMINAL_CONTROL.sub("", replace_lone_surrogates(text))


def verdict_line(verdict) -> str:
    """``checks: json pass, schema FAIL (reason) … → score 0.50``."""
    parts = []
    for name, result in verdict.checks.items():
        if result.status == NA:
            continue
        why = f" ({'; '.join(result.reasons)[:200]})" if result.reasons else ""
        parts.append(f"{name} pass" if result.status == PASS else f"{name} FAIL{why}")
    return f"checks: {', '.join(parts)} -> score {verdict.score:.2f}"


def answer(backend: Backend, case: EvalCase, modes: tuple[str, ...]) -> list[float]:
    """Ask ``case`` in every mode, print each answer and its verdict; the scores."""
    scores = []
    for mode in modes:
        generation = backend.generate(case.messages(), answer_schema(case.task) if mode == "constrained" else None)
        verdict = check_reply(case, generation.text, generation.error)
        facts = [f"{generation.latency_s:.2f} s"]
        if generation.output_tokens:
            facts.append(f"{generation.output_tokens} tokens")
        if generation.truncated:
            facts.append("cut off at max_tokens")
        print(f"[{mode}] ({', '.join(facts)})")
        print(for_terminal(generation.text if generation.text is not None else f"no answer: {generation.error}"))
        print(for_terminal(verdict_line(verdict)), flush=True)
        scores.append(verdict.score)
    return scores


def run(cfg: DictConfig) -> float:
    c, e = cfg.chat, cfg.eval
    check_can_constrain(e.backend, c.constrained, "chat.constrained")
    modes = MODES[c.constrained]
    backend = make_backend(e.backend, e, model_cfg=cfg.model, modelfile=str(Path(cfg.export.output_dir) / "Modelfile"))
    scores: list[float] = []
    try:
        print(f"Chatting with {backend.label}: task {c.task}, language {c.language}, platform {c.platform}, "
              f"answers {' and '.join(modes)}", file=sys.stderr)
        for n, message in enumerate(_messages(c.prompt)):
            case = EvalCase(f"chat-{n + 1}", c.task, c.language, c.platform, message, source="chat")
            scores += answer(backend, case, modes)
    finally:
        backend.close()
    return sum(scores) / len(scores) if scores else 0.0
