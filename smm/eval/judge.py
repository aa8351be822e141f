"""An optional LLM judge: any OpenAI-compatible model rates each answer's tone and brand fit.

With ``eval.judge.url`` set, every case that got a JSON answer is shown to the judge with a short
rubric for its task; the judge replies ``{"score": 1-5, "reason": "..."}``. Its mean (scaled to
0-1) is reported beside the checks, per task and language, but it is never part of the score or
the gate: a judge is itself a model and can be wrong, slow or down. An unreachable judge or an
unreadable judgement is recorded, never an error of the run. The API key comes from the variable
named by ``eval.judge.api_key_env`` and is only sent as a header. The URL may hold a password: given
on the command line it is moved into ``$SMM_JUDGE_URL`` before Hydra records the config (smm/cli.py),
and it is shown masked everywhere.
"""
from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Sequence

from smm.backends import GenerationSettings, Messages, generate_all
from smm.eval.checks import parse_reply
from smm.errors import SmmError
from smm.eval.cases import EvalCase
from smm.secrets import mask_url
from smm.tasks import LANGUAGES, TASKS

log = logging.getLogger(__name__)

RUBRICS: dict[str, str] = {
    "post_generation": "Is it an engaging, ready-to-publish post for the named platform, built on the user's "
                       "keywords, in a tone that fits the business and its audience?",
    "hashtags": "Are the hashtags relevant to the topic and audience, sensibly grouped, and is the strategy useful?",
    "ab_variations": "Are the variations genuinely different angles on the same offer, each ready to publish in "
                     "the business's tone, with a hypothesis the test can answer?",
    "sentiment": "Is the sentiment reading right, and is the suggested reply empathetic, helpful and on-brand?",
    "posting_times": "Are the recommended days and times plausible for this audience, platform and time zone, "
                     "with sensible reasons?",
    "brand_voice": "Does the rewrite sound like the brand voice the user describes while keeping every fact "
                   "of the original post?",
}
SCALE = (1, 5)
URL_ENV = "SMM_JUDGE_URL"


def judge_url(judge_cfg) -> str | None:
    """The judge's server: ``eval.judge.url``, else ``$SMM_JUDGE_URL``; None = no judge."""
    return judge_cfg.url or os.environ.get(URL_ENV) or None


def judge_messages(case: EvalCase, answer: str) -> Messages:
    """What the judge is asked about one answer."""
    low, high = SCALE
    system = (
        "You review social media copy written for small businesses. Rate the answer to the request "
        f"from {low} (poor) to {high} (excellent) on this question: {RUBRICS[case.task]} The answer is "
        f"meant to be in {LANGUAGES[case.language]}. Reply with one JSON object only: "
        '{"score": <whole number>, "reason": "<one sentence>"}'
    )
    user = f"Request ({case.platform}):\n{case.prompt}\n\nAnswer:\n{answer}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_judgement(text: str | None) -> dict[str, Any]:
    """``{"score": 0-1, "rating": 1-5, "reason": ...}`` from a judge's reply, or ``{"error": ...}``."""
    if text is None:
        return {"error": "no reply"}
    _, value, problem = parse_reply(text)
    if problem or not isinstance(value, dict):
        return {"error": f"unreadable judgement: {text.strip()[:120]!r}"}
    rating, reason = value.get("score"), value.get("reason", "")
    low, high = SCALE
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not low <= rating <= high:
        return {"error": f"score {rating!r} is not a number from {low} to {high}"}
    return {"score": round((rating - low) / (high - low), 4), "rating": rating, "reason": str(reason)[:300]}


def make_judge(judge_cfg, eval_cfg):
    """The judge's client (an OpenAI-compatible backend at temperature 0)."""
    from smm.backends.openai_compat import OpenAIBackend

    settings = GenerationSettings(0.0, judge_cfg.max_tokens, eval_cfg.seed, eval_cfg.timeout_s, eval_cfg.retries)
    return OpenAIBackend(judge_url(judge_cfg), judge_cfg.model, settings, eval_cfg.concurrency, judge_cfg.api_key_env)


def judge_records(records: list[dict], cases: Sequence[EvalCase], judge_cfg, eval_cfg) -> dict[str, Any]:
    """Add ``record["judge"]`` to every record with a JSON answer; what the report says of the judge."""
    info: dict[str, Any] = {"model": judge_cfg.model, "url": mask_url(judge_url(judge_cfg))}
    by_id = {c.id: c for c in cases}
    todo = [r for r in records if r["format"] in ("json", "fenced")]
    for r in records:
        r["judge"] = None
    try:
        judge = make_judge(judge_cfg, eval_cfg)
    except SmmError as exc:
        log.warning("The judge is not available (the run goes on without it): %s", exc)
        return {**info, "error": str(exc)}
    try:
        generations = generate_all(judge, [judge_messages(by_id[r["id"]], r["output"]) for r in todo])
    except SmmError as exc:
        log.warning("The judge failed (the run goes on without it): %s", exc)
        return {**info, "error": str(exc)}
    finally:
        judge.close()
    for record, generation in zip(todo, generations):
        record["judge"] = parse_judgement(generation.text) if generation.error is None else {"error": generation.error}
    return {**info, "label": judge.label}


def summarize_judge(records: Sequence[dict], info: dict[str, Any]) -> dict[str, Any]:
    """The judge's mean score (0-1) overall, per task and per language, and how many it judged."""
    judged = [r for r in records if (r.get("judge") or {}).get("score") is not None]

    def mean(group: list[dict]) -> float | None:
        return round(statistics.fmean(r["judge"]["score"] for r in group), 4) if group else None

    return {
        **info,
        "mean": mean(judged),
        "judged": len(judged),
        "errors": sum("error" in (r.get("judge") or {}) for r in records),
        "by_task": {t: mean([r for r in judged if r["task"] == t]) for t in TASKS if any(r["task"] == t for r in records)},
        "by_language": {lang: mean([r for r in judged if r["language"] == lang]) for lang in LANGUAGES
                        if any(r["language"] == lang for r in records)},
    }
