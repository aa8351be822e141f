"""The evaluation's prompts must never be trained on: a check on every prepared example.

A prompt is compared case-folded with its whitespace collapsed, so a copy that differs only in
spacing or case is caught too. The evaluation cases are the built-in ones (smm/eval/cases.jsonl)
and ``eval.test_file`` when set; a user simulator's prompt pool must be disjoint from them as well
(bench/loop_simulator.py checks it with :func:`leaked_cases`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def prompt_form(text: str) -> str:
    return " ".join(text.casefold().split())


@lru_cache(maxsize=4)
def eval_prompts(test_file: str | None = None) -> dict[str, str]:
    """``{prompt form: case id}`` of the evaluation cases."""
    from smm.eval.cases import BUILTIN_CASES, load_cases

    files = [BUILTIN_CASES] + ([Path(test_file)] if test_file and Path(test_file).is_file() else [])
    return {prompt_form(case.prompt): case.id for path in files for case in load_cases(path)}


def leaked_case(example: dict, prompts: dict[str, str]) -> str | None:
    """The id of the evaluation case whose prompt is a user turn of ``example``, else None."""
    for message in example["messages"]:
        if message["role"] == "user" and (case := prompts.get(prompt_form(message["content"]))):
            return case
    return None


def leaked_cases(texts: list[str], test_file: str | None = None) -> list[tuple[str, str]]:
    """``(text, case id)`` for each of ``texts`` that is an evaluation case's prompt."""
    prompts = eval_prompts(test_file)
    return [(text, prompts[prompt_form(text)]) for text in texts if prompt_form(text) in prompts]
