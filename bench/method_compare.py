"""SFT vs SFT+DPO vs SFT+KTO on the same ratings (issue 24): which training method makes the better model?

Trains one model per method on the seeds plus one folder of exported feedback (``feedback_sft.jsonl``,
``feedback_dpo.jsonl``, ``feedback_kto.jsonl``: e.g. a loop run's ``feedback/`` snapshot, so every
method sees exactly the ratings that run saw), exports each to GGUF and evaluates each on the
built-in cases, then prints one row per method: score, format and judgement checks, the held-out
preference margins before and after the preference phase (DPO: chosen - rejected log-probability;
KTO: desirable - undesirable), and the training time.

    python bench/method_compare.py --feedback /tmp/loop-rounds/runs/<round 1 run>/feedback \\
        --workdir /tmp/methods --extra training.epochs=2 --doc docs/loop.md

Every run uses the README's demo recipe (``preset=demo``: SmolLM2-135M-Instruct, bfloat16, packed)
unless ``--preset`` says otherwise. Results: ``<workdir>/methods.json``; with ``--doc``, the table
goes into that Markdown file between ``<!-- methods -->`` markers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from loop_rounds import pct, publish, rates  # noqa: E402


def train_and_evaluate(work: Path, method: str, feedback: Path, preset: str, cases: int, extra: list[str]) -> dict:
    """One method's pipeline (prepare, train, export, evaluate) in ``work/method``; its figures."""
    out = work / method
    args = [sys.executable, str(REPO / "run.py"), "stage=pipeline", f"preset={preset}",
            "pipeline.stages=[prepare,train,export,evaluate]", "export.base_gguf=false", "eval.baseline=null",
            f"data.sources=[{REPO / 'data' / 'seed'},{feedback}]", f"data.output_dir={out / 'data'}",
            f"training.output_dir={out / 'adapter'}", f"training.checkpoint_dir={out / 'checkpoints'}",
            f"export.output_dir={out / 'gguf'}", f"export.merged_dir={out / 'merged'}", f"eval.output_dir={out / 'eval'}",
            f"eval.max_cases={cases}", f"training.method={method}", f"hydra.run.dir={out / 'hydra'}", *extra]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise SystemExit(f"{method}: the pipeline failed (exit {result.returncode}); see {out / 'pipeline.log'}")
    metrics = json.loads((out / "adapter" / "metrics.json").read_text(encoding="utf-8"))
    report = json.loads(sorted((out / "eval").glob("*/report.json"))[-1].read_text(encoding="utf-8"))
    phase = metrics.get("dpo") or metrics.get("kto") or {}
    margin = {when: (phase.get(f"val_{when}") or {}).get("logp_margin") for when in ("before", "after")}
    return {"method": method, "wall_s": wall, "train_s": round(sum(metrics.get("phase_seconds", {}).values()), 1),
            "preference_examples": phase.get("train_pairs", phase.get("train_examples")), "margin": margin,
            **rates(report["summary"])}


def table(rows: list[dict]) -> str:
    head = ["method", "score", "json", "schema", "language", "hashtags", "sentiment acc.", "distinct variations",
            "held-out margin before → after", "preference rows", "train stage", "pipeline wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        before, after = r["margin"]["before"], r["margin"]["after"]
        margin = "-" if before is None else f"{before:+.2f} → {after:+.2f}"
        lines.append("| " + " | ".join([r["method"], f"{r['score']:.3f}", *[pct(r[k]) for k in ("json", "schema", "language", "hashtags")],
                                         pct(r["sentiment accuracy"]), pct(r["distinct variations"]), margin,
                                         str(r["preference_examples"] or "-"), f"{r['train_s']:.0f} s",
                                         f"{r['wall_s']:.0f} s"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feedback", type=Path, required=True, help="a folder of exported feedback (a loop run's feedback/)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--methods", default="sft,sft_then_dpo,sft_then_kto")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--cases", type=int, default=0, help="eval.max_cases (0 = every built-in case)")
    parser.add_argument("--doc", type=Path, help="a Markdown file to put the table into")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args(argv)
    if not (args.feedback / "feedback_sft.jsonl").is_file():
        raise SystemExit(f"--feedback {args.feedback}: no feedback_sft.jsonl there (point it at exported feedback)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        rows.append(train_and_evaluate(args.workdir, method, args.feedback.resolve(), args.preset, args.cases, args.extra))
        print(json.dumps(rows[-1]), flush=True)
    publish(rows, args.workdir / "methods.json", table(rows), args.doc, "methods", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
