"""Benchmark: does ``eval.concurrency`` speed up ``stage=evaluate`` against a server that answers in parallel?

A local stub speaking Ollama's API (tests/fixtures_eval_server.py) answers every request after a
fixed delay, in parallel like Ollama with ``OLLAMA_NUM_PARALLEL`` or vLLM. The built-in cases are
run through the stage (``smm.stages.evaluate.run``, checks and reports included) at each
concurrency, and the answer phase alone is timed through the same client and thread pool.

With ``--gguf FILE`` the answer phase is also timed against llama-cpp-python's own server
(``python -m llama_cpp.server``), which serves one request at a time.

    python bench/eval_concurrency.py                 # 60 cases, 0.5 s per answer, concurrency 1 and 4
    python bench/eval_concurrency.py --gguf ~/.cache/smm/gguf/tiny-qwen2-v1-q4_k_m.gguf
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fixtures_eval_server import StubLLMServer  # noqa: E402
from fixtures_llama_server import free_port  # noqa: E402

from smm.backends import GenerationSettings, generate_all  # noqa: E402
from smm.backends.ollama import OllamaBackend  # noqa: E402
from smm.backends.openai_compat import OpenAIBackend  # noqa: E402
from smm.eval.cases import select_cases  # noqa: E402
from smm.tasks import TASKS  # noqa: E402

MODEL = "social-media-marketer"
BY_PROMPT = {t.system_prompt: json.dumps(t.example) for t in TASKS.values()}


def example_answer(messages) -> str:
    """The registry's example answer of the case's task (the content does not matter for timing)."""
    return BY_PROMPT[messages[0]["content"]]


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    from smm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=["stage=evaluate", *overrides])


def time_answers(backend, conversations) -> float:
    start = time.perf_counter()
    generations = generate_all(backend, conversations)
    elapsed = time.perf_counter() - start
    failed = [g.error for g in generations if g.error]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return elapsed


def time_stage(url: str, concurrency: int, n_cases: int, out: str) -> float:
    from smm.stages import evaluate

    cfg = compose(f"eval.url={url}", f"eval.concurrency={concurrency}", f"eval.max_cases={n_cases}", f"eval.output_dir={out}")
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the stage's summary table
        evaluate.run(cfg)
    return time.perf_counter() - start


def llama_server_times(gguf: str, conversations, levels, max_tokens: int) -> dict[int, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        settings = GenerationSettings(temperature=0.0, max_tokens=max_tokens, timeout_s=300, retries=0)
        deadline = time.monotonic() + 90
        while True:
            try:
                backend = OpenAIBackend(url, MODEL, settings, 1)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("llama_cpp.server did not start")
                time.sleep(0.5)
        time_answers(backend, conversations[:2])  # warm-up
        return {c: time_answers(OpenAIBackend(url, MODEL, settings, c), conversations) for c in levels}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=60, help="built-in cases to run (default 60)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the stub takes per answer (default 0.5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="levels to compare (default 1 4)")
    parser.add_argument("--gguf", help="also time llama-cpp-python's server on this GGUF")
    parser.add_argument("--max-tokens", type=int, default=16, help="answer length for --gguf (default 16)")
    args = parser.parse_args()

    cases = select_cases(max_cases=args.cases)
    conversations = [c.messages() for c in cases]
    server = StubLLMServer({f"{MODEL}:latest": example_answer}, delay_s=args.delay).start()
    rows = []
    try:
        settings = GenerationSettings(timeout_s=60)
        with tempfile.TemporaryDirectory() as out:
            time_stage(server.url, 1, 2, out)  # warm-up: imports, lingua's models, matplotlib
            for level in args.concurrency:
                answers = time_answers(OllamaBackend(server.url, MODEL, settings, level), conversations)
                stage = time_stage(server.url, level, len(cases), out)
                rows.append((f"stub, {args.delay:g} s/answer, parallel", level, answers, stage))
    finally:
        server.stop()
    if args.gguf:
        for level, answers in llama_server_times(args.gguf, conversations, args.concurrency, args.max_tokens).items():
            rows.append((f"llama_cpp.server, {Path(args.gguf).name}", level, answers, None))

    import httpx
    import llama_cpp

    print(f"\n{len(cases)} cases · {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs · "
          f"Python {platform.python_version()}, httpx {httpx.__version__}, llama-cpp-python {llama_cpp.__version__}")
    print(f"{'server':<44} {'concurrency':>11} {'answers (s)':>12} {'stage (s)':>10} {'vs conc. 1':>11}")
    base = {}
    for name, level, answers, stage in rows:
        base.setdefault(name, answers)
        stage_text = f"{stage:.1f}" if stage is not None else "–"
        print(f"{name:<44} {level:>11} {answers:>12.1f} {stage_text:>10} {answers / base[name]:>10.2f}x")


if __name__ == "__main__":
    main()
