"""Warm start vs full retraining on the same night (issue 24): which loop run makes the better model, how fast?

Replays one round of ``bench/loop_rounds.py`` twice from the same state: the same deployed run
(``--deployed``, e.g. round 2's run folder) and the same exported feedback (``--feedback``, e.g.
round 3's ``feedback/`` snapshot). Each mode gets a fresh loop folder holding a hard-linked copy of
the deployed run as ``loop.current``, and runs ``python run.py stage=loop`` with ``loop.feedback=false``
(the files as they are: no database) and ``loop.warm_start`` true or false. So the only difference is
what the loop trains on and from where: warm = the feedback lines new since the deployed run plus a
``loop.replay`` sample of its training data, from its adapter; full = seeds plus every feedback
line, from a fresh adapter. Both are evaluated on the built-in cases and judged by the gate against
the same deployed model.

    python bench/warm_compare.py --deployed /tmp/loop-rounds/runs/<round 2> \\
        --feedback /tmp/loop-rounds/runs/<round 3>/feedback --workdir /tmp/warm-compare \\
        --extra training.epochs=2 --doc docs/loop.md

Results: ``<workdir>/warm_compare.json``; with ``--doc`` the table goes between ``<!-- warm -->`` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from loop_rounds import MODELS, latest_run, pct, publish, rates  # noqa: E402

from smm.stages.loop import FEEDBACK_FILES  # noqa: E402


def loop_folder(work: Path, deployed: Path, feedback: Path) -> Path:
    """A fresh loop folder: ``runs/<deployed>`` (hard links) as ``current``, and the feedback files."""
    if work.exists():
        shutil.rmtree(work)
    (work / "feedback").mkdir(parents=True)
    shutil.copytree(deployed, work / "runs" / deployed.name, copy_function=os.link, symlinks=True)
    (work / "current").symlink_to(work / "runs" / deployed.name)
    for name in FEEDBACK_FILES:
        if (feedback / name).is_file():
            shutil.copy2(feedback / name, work / "feedback" / name)
    return work


def run_mode(work: Path, mode: str, model: str, cases: int, extra: list[str]) -> dict:
    """One loop run (``mode`` warm or full) in ``work``; its figures."""
    feedback = work / "feedback"
    args = [sys.executable, str(REPO / "run.py"), "stage=loop", *MODELS[model],
            f"data.sources=[{REPO / 'data' / 'seed'},{feedback}]", f"feedback.output_dir={feedback}",
            f"export.merged_dir={work / 'merged'}", f"loop.runs_dir={work / 'runs'}", f"loop.current={work / 'current'}",
            "loop.feedback=false", "loop.force=true", f"loop.warm_start={str(mode == 'warm').lower()}",
            "eval.backend=llama_cpp", f"eval.max_cases={cases}", f"hydra.run.dir={work / 'hydra'}", *extra]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=work, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    (work / "loop.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode not in (0, 3):
        raise SystemExit(f"{mode}: the loop failed (exit {result.returncode}); see {work / 'loop.log'}")
    run = latest_run(work)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    metrics = json.loads((run / "adapter" / "metrics.json").read_text(encoding="utf-8"))
    report = json.loads(Path(manifest["steps"]["evaluate"]["outputs"]["report"]).read_text(encoding="utf-8"))
    gate = manifest["steps"].get("promote", {}).get("metrics", {}).get("gate", {})
    return {"mode": mode, "run": run.name, "status": manifest["status"], "wall_s": wall,
            "train_s": manifest["steps"]["train"]["seconds"], "train_examples": metrics["train_examples"],
            "steps": metrics["steps"], "tokens_trained": metrics["train_tokens_per_epoch"] * metrics["epochs"],
            "tokens_per_s": metrics["real_tokens_per_s"], "init_adapter": metrics.get("init_adapter"),
            "feedback_lines": manifest["steps"]["feedback"]["metrics"], "gate_reasons": gate.get("reasons", []),
            "deployed_score": gate.get("baseline_score"), **rates(report["summary"])}


def table(rows: list[dict]) -> str:
    head = ["mode", "trained on", "score (deployed → candidate)", "json", "schema", "language", "length",
            "sentiment acc.", "distinct variations", "decision", "train stage", "loop wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["mode"], f"{r['train_examples']} examples, {r['tokens_trained']:,.0f} tokens",
            f"{r['deployed_score']:.3f} → {r['score']:.3f}" if r["deployed_score"] is not None else f"{r['score']:.3f}",
            *[pct(r[k]) for k in ("json", "schema", "language", "length", "sentiment accuracy", "distinct variations")],
            r["status"] + (f" ({'; '.join(r['gate_reasons'])})" if r["gate_reasons"] else ""),
            f"{r['train_s']:.0f} s", f"{r['wall_s']:.0f} s"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployed", type=Path, required=True, help="the deployed loop run both modes start from")
    parser.add_argument("--feedback", type=Path, required=True, help="the exported feedback of the night (a later run's feedback/)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2_demo", choices=sorted(MODELS))
    parser.add_argument("--modes", default="warm,full")
    parser.add_argument("--cases", type=int, default=0, help="eval.max_cases (0 = every built-in case)")
    parser.add_argument("--doc", type=Path, help="a Markdown file to put the table into")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both loop runs")
    args = parser.parse_args(argv)
    for what, path, needed in (("--deployed", args.deployed, "manifest.json"), ("--feedback", args.feedback, "feedback_sft.jsonl")):
        if not (path / needed).is_file():
            raise SystemExit(f"{what} {path}: no {needed} there")
    rows = []
    for mode in args.modes.split(","):
        work = loop_folder(args.workdir.resolve() / mode, args.deployed.resolve(), args.feedback.resolve())
        rows.append(run_mode(work, mode, args.model, args.cases, args.extra))
        print(json.dumps(rows[-1]), flush=True)
    publish(rows, args.workdir / "warm_compare.json", table(rows), args.doc, "warm", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
