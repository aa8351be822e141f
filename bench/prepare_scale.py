"""Benchmark: `stage=prepare` on 1,000,000 realistic examples, end to end, with peak memory.

    python bench/prepare_scale.py [--examples 1000000] [--workdir /tmp/smm-prepare-bench] [override ...]

Generates varied, valid examples into 10 files (every task, language and platform; each answer is
a seed example's answer with its prose and hashtags rewritten from words of the same language, so
texts differ as real ones do; 1% exact and 0.2% near duplicates), then times
``python run.py stage=prepare`` on them while sampling the resident memory of the whole process
tree (the sum over the main process and its workers: shared pages are counted once per process,
so this is an upper bound) and, as the machine may be shared, the CPU time the tree used (on an
idle machine the wall time is about that divided by the cores, plus the serial part that the log's
phase timings show). Extra arguments are passed to run.py as overrides.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smm.data.examples import normalize_example  # noqa: E402

SEEDS = REPO / "data" / "seed" / "social_media_examples.jsonl"
FILES = 10


def vocabularies(seeds: list[dict]) -> dict[str, list[str]]:
    words: dict[str, set[str]] = {}
    for seed in seeds:
        text = " ".join(m["content"] for m in seed["messages"][1:])
        words.setdefault(seed["language"], set()).update(w for w in re.findall(r"[^\W\d_]{3,}", text))
    return {language: sorted(found) for language, found in words.items()}


def salad(rng: random.Random, vocab: list[str], limit: int) -> str:
    """Sentences of random words of one language, at most ``limit`` characters."""
    out, sentence = "", []
    target = rng.randint(max(1, limit * 2 // 3), max(1, limit))
    while True:
        word = rng.choice(vocab)
        candidate = " ".join(sentence + [word])
        if len(out) + len(candidate) + 2 > target:
            break
        sentence.append(word)
        if len(sentence) >= rng.randint(6, 14):
            out += sentence[0].capitalize() + " " + " ".join(sentence[1:]) + ". "
            sentence = []
    if sentence:
        out += sentence[0].capitalize() + " " + " ".join(sentence[1:]) + "."
    return out.strip() or vocab[0][:limit]


def rewrite(value, rng: random.Random, vocab: list[str]):
    """The answer with long texts and hashtags replaced (never longer, so limits still hold)."""
    if isinstance(value, dict):
        return {k: rewrite(v, rng, vocab) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite(v, rng, vocab) for v in value]
    if isinstance(value, str) and value.startswith("#"):
        tag = "#" + "".join(w.capitalize() for w in rng.sample(vocab, 2))
        return tag if len(tag) <= len(value) else value
    if isinstance(value, str) and len(value) > 24:
        return salad(rng, vocab, len(value))
    return value


def generate(seeds: list[dict], n: int, folder: Path) -> None:
    rng = random.Random(12)
    vocab = vocabularies(seeds)
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(folder / f"part-{k:02d}.jsonl", "w", encoding="utf-8") for k in range(FILES)]
    previous: list[str] = []
    for i in range(n):
        if previous and i % 100 == 99:  # an exact duplicate
            line = rng.choice(previous)
        elif previous and i % 500 == 7:  # a near duplicate of the last example
            example = json.loads(previous[-1])
            example["messages"][1]["content"] += " Danke!"
            line = json.dumps(example, ensure_ascii=False)
        else:
            seed = rng.choice(seeds)
            words = vocab[seed["language"]]
            messages = [dict(m) for m in seed["messages"]]
            user = messages[1]["content"]
            messages[1]["content"] = f"{salad(rng, words, max(80, len(user)))} ({rng.choice(words)} {i})"
            answer = rewrite(json.loads(messages[2]["content"]), rng, words)
            messages[2]["content"] = json.dumps(answer, ensure_ascii=False)
            example = {"messages": messages, "task": seed["task"], "language": seed["language"], "platform": seed.get("platform")}
            line = json.dumps(example, ensure_ascii=False)
            if i < 2000:
                normalize_example(json.loads(line))  # the generator's own check: every example is valid
            previous = (previous + [line])[-50:]
        handles[i % FILES].write(line + "\n")
    for handle in handles:
        handle.close()


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                todo += [int(child) for child in fh.read().split()]
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/smm-prepare-bench"))
    args, overrides = parser.parse_known_args()
    seeds = [json.loads(line) for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()]
    inputs = args.workdir / f"in-{args.examples}"
    if not inputs.exists():
        started = time.perf_counter()
        partial = inputs.with_name(inputs.name + ".partial")
        generate(seeds, args.examples, partial)
        partial.rename(inputs)
        print(f"generated {args.examples:,} examples in {time.perf_counter() - started:.0f} s")
    size = sum(p.stat().st_size for p in inputs.iterdir())
    out = args.workdir / "out"
    command = [sys.executable, str(REPO / "run.py"), "stage=prepare", f"data.sources=[{inputs}]",
               f"data.output_dir={out}", f"hydra.run.dir={args.workdir / 'run'}", *overrides]
    load_before = os.getloadavg()
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    seconds = time.perf_counter() - started
    sampler.join()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    if process.returncode:
        sys.exit(f"prepare failed ({process.returncode}):\n{output[-3000:]}")
    print(output[-2500:])
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    print(json.dumps({
        "examples": args.examples, "input_mb": round(size / 1e6), "seconds": round(seconds, 1),
        "cpu_seconds_process_tree": round(cpu, 1),
        "peak_rss_mib_process_tree": round(peak[0] / 2**20), "train": stats["train"]["examples"],
        "val": stats["val"]["examples"], "duplicates_dropped": stats["duplicates_dropped"],
        "near_duplicate_pairs": len(stats["near_duplicates"]), "rejected": stats["rejected"]["total"],
        "language_mismatches": stats["language_mismatches"], "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "overrides": overrides,
    }, indent=2))


if __name__ == "__main__":
    main()
