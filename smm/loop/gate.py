"""The loop's promote gate: is the new model better than the deployed one on the same cases?

It reads the evaluation report of the new model, whose ``comparison`` (smm/eval/report.py) holds the
score and per-check pass rates of both models on the cases they share. It passes when the score
rises by at least ``min_delta`` and no check that the deployed model passed at least sometimes
(pass rate > 0) loses more than ``max_regression`` of its pass rate. When the two models were trained
on different task contracts (task prompts and schemas: the ``task_contract`` hash in their manifests),
the verdict says so in ``notes``: their scores then compare answers to different task definitions.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    """Why it did not pass (empty when it passed)."""
    score: float | None = None
    baseline_score: float | None = None
    delta: float | None = None
    blocking_checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the verdict should be read with (a change of the task contract); never blocks."""

    def as_dict(self) -> dict:
        return dict(vars(self))


def judge(report: dict, min_delta: float, max_regression: float) -> Verdict:
    """The verdict on ``report`` (an evaluation report with a baseline comparison)."""
    comparison = report.get("comparison")
    if not comparison:
        return Verdict(True, score=report.get("score"))
    delta = comparison["delta"]
    verdict = Verdict(True, score=comparison["score"], baseline_score=comparison["baseline_score"], delta=delta)
    if delta < min_delta:
        verdict.reasons.append(f"score {comparison['score']:.3f} vs deployed {comparison['baseline_score']:.3f}: "
                               f"delta {delta:+.3f} < loop.min_delta {min_delta:+.3f}")
    for name, check in comparison["checks"].items():
        before, change = check["baseline_rate"], check["delta"]
        if before and change is not None and change < -max_regression:
            verdict.blocking_checks.append(name)
            verdict.reasons.append(f"check {name}: pass rate {before:.0%} → {check['rate']:.0%} "
                                   f"(drop {-change:.0%} > loop.max_regression {max_regression:.0%})")
    verdict.passed = not verdict.reasons
    return verdict


def contract_note(candidate: str | None, deployed: str | None) -> str | None:
    """The note for a candidate and a deployed model trained on different task contracts (or None)."""
    if candidate == deployed:
        return None
    return (f"the deployed model was trained on task contract {deployed or 'unrecorded'}, this run on "
            f"{candidate or 'unrecorded'}: the tasks' prompts or schemas changed, so the scores compare "
            "answers to different task definitions")
