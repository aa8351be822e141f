"""The loop's promote gate: is the new model better than the deployed one on the same cases?

It reads the evaluation report of the new model, whose ``comparison`` (smm/eval/report.py) holds the
score and per-check pass rates of both models on the cases they share, and per check the cases one
model passed and the other failed. It passes when the score rises by at least ``min_delta`` and no
check that the deployed model passed at least sometimes (pass rate > 0) loses more than
``max_regression`` of its pass rate where that loss is more than chance: McNemar's exact test on
the cases the check flipped (lost vs gained), one-sided p below ``regression_p`` (default 0.1). On
a check that applies to 10 cases, one or two lost cases are chance (p 0.5, 0.25): the loop on
SmolLM2 was refused twice for such drops while its score rose by 0.03-0.10 (docs/loop.md). Its
round 1 also lost 9 enum cases and gained 3 (p 0.07), a real regression of its posting times,
which the default keeps blocking. When the two models were trained
on different task contracts (task prompts and schemas: the ``task_contract`` hash in their manifests),
the verdict says so in ``notes``: their scores then compare answers to different task definitions.
"""
from __future__ import annotations

import math
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
    """What the verdict should be read with (a change of the task contract, a drop put down to
    chance); never blocks."""

    def as_dict(self) -> dict:
        return dict(vars(self))


def flips_p_value(lost: int, gained: int) -> float:
    """One-sided exact McNemar p-value: the chance of ``lost`` or more of ``lost + gained`` flipped
    cases going against the model if flips went either way at random."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n if n else 1.0


def judge(report: dict, min_delta: float, max_regression: float, regression_p: float = 1.0) -> Verdict:
    """The verdict on ``report`` (an evaluation report with a baseline comparison); ``regression_p``
    1.0 blocks every drop beyond ``max_regression`` (reports without per-case flips are judged so)."""
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
        if not before or change is None or change >= -max_regression:
            continue
        flips = ""
        if "lost" in check:
            p = flips_p_value(check["lost"], check["gained"])
            if p >= regression_p:
                verdict.notes.append(f"check {name}: pass rate {before:.0%} → {check['rate']:.0%}, "
                                     f"{check['lost']} case(s) lost and {check['gained']} gained: chance (p {p:.2f} >= loop.regression_p {regression_p:g})")
                continue
            flips = f", {check['lost']} case(s) lost and {check['gained']} gained, p {p:.3f} < loop.regression_p {regression_p:g}"
        verdict.blocking_checks.append(name)
        verdict.reasons.append(f"check {name}: pass rate {before:.0%} → {check['rate']:.0%} "
                               f"(drop {-change:.0%} > loop.max_regression {max_regression:.0%}{flips})")
    verdict.passed = not verdict.reasons
    return verdict


def contract_note(candidate: str | None, deployed: str | None) -> str | None:
    """The note for a candidate and a deployed model trained on different task contracts (or None)."""
    if candidate == deployed:
        return None
    return (f"the deployed model was trained on task contract {deployed or 'unrecorded'}, this run on "
            f"{candidate or 'unrecorded'}: the tasks' prompts or schemas changed, so the scores compare "
            "answers to different task definitions")
