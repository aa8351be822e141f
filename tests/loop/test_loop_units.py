"""The loop's parts without training: the promote gate, the deployed-run symlink and history, the
lock, the recovery of an interrupted promotion, the dry run and the pairs' split."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import compose_config, run_smm
from fixtures_train import write_rows

from smm.loop import lineage
from smm.errors import LoopLocked
from smm.eval.checks import CHECKS
from smm.loop.gate import flips_p_value, judge
from smm.data.preferences import InvalidPair, normalize_pair, prompt_key, split_pairs


def report(score: float, baseline: float, checks: dict[str, tuple]) -> dict:
    return {"score": score, "comparison": {
        "score": score, "baseline_score": baseline, "delta": round(score - baseline, 4),
        "checks": {name: {"rate": new, "baseline_rate": old, "delta": None if old is None else round(new - old, 4)}
                   for name, (new, old) in checks.items()}}}


def test_gate_passes_a_better_model_and_names_what_blocks_a_worse_one():
    better = judge(report(0.6, 0.5, {"json": (1.0, 1.0), "length": (0.5, 0.4)}), 0.05, 0.1)
    assert better.passed and better.reasons == [] and better.delta == 0.1
    too_little = judge(report(0.52, 0.5, {"json": (1.0, 1.0)}), 0.05, 0.1)
    assert not too_little.passed and "loop.min_delta" in too_little.reasons[0]
    regressed = judge(report(0.7, 0.5, {"json": (0.7, 1.0), "length": (0.9, 0.0), "hashtags": (0.85, 0.9)}), 0.05, 0.1)
    assert not regressed.passed and regressed.blocking_checks == ["json"]  # 0 → 0.9 and -5 pp don't block
    assert "check json: pass rate 100% → 70%" in regressed.reasons[0]
    assert judge({"score": 0.0, "comparison": None}, 0.05, 0.1).passed  # nothing deployed yet


def test_flips_p_value_is_mcnemars_exact_one_sided_test():
    assert (flips_p_value(0, 0), flips_p_value(0, 3)) == (1.0, 1.0)
    assert (flips_p_value(1, 0), flips_p_value(2, 0), flips_p_value(5, 0)) == (0.5, 0.25, 0.03125)
    assert flips_p_value(3, 1) == 5 / 16  # 3 or 4 of 4 flips against the model


def test_gate_puts_a_drop_of_a_case_or_two_down_to_chance_and_blocks_a_real_one():
    """The SmolLM2 loop's round 2 (docs/loop.md): score +0.10, refused for variations 10% → 0% (one
    case of ten) and timezone 70% → 50% (two of ten). With the flips, those are chance; six cases
    lost and none gained is not; regression_p 1 blocks every drop as before."""
    def flipped(new, old, lost, gained):
        return {"rate": new, "baseline_rate": old, "delta": round(new - old, 4), "lost": lost, "gained": gained}

    checks = {"variations": flipped(0.0, 0.1, 1, 0), "timezone": flipped(0.5, 0.7, 2, 0), "json": flipped(0.9, 0.9, 2, 2)}
    rep = {"score": 0.757, "comparison": {"score": 0.757, "baseline_score": 0.656, "delta": 0.101, "checks": checks}}
    chance = judge(rep, 0.01, 0.05, 0.05)
    assert chance.passed and chance.blocking_checks == [] and len(chance.notes) == 2
    assert "1 case(s) lost and 0 gained: chance (p 0.50" in chance.notes[0]
    assert judge(rep, 0.01, 0.05, 1.0).blocking_checks == ["variations", "timezone"]
    checks["language"] = flipped(0.8, 0.9, 6, 0)
    real = judge(rep, 0.01, 0.05, 0.05)
    assert not real.passed and real.blocking_checks == ["language"] and "p 0.016 < loop.regression_p 0.05" in real.reasons[0]
    checks.pop("language")
    checks["enums"] = flipped(0.4, 0.7, 9, 3)  # the SmolLM2 loop's round 1: p 0.073
    assert judge(rep, 0.01, 0.05, 0.1).blocking_checks == ["enums"] and judge(rep, 0.01, 0.05, 0.05).passed


def test_the_comparison_counts_the_cases_each_check_lost_and_gained():
    from smm.eval.report import compare

    def record(case_id, **statuses):
        return {"id": case_id, "score": 0.5, "format": "json", "error": None, "latency_s": 1.0, "tokens_per_s": None, "output": "{}",
                "task": "sentiment", "language": "en", "platform": None,
                "checks": {name: {"status": statuses.get(name, "n/a")} for name in CHECKS}}

    before = [record("a", json="pass"), record("b", json="pass"), record("c", json="fail"), record("d")]
    after = [record("a", json="fail"), record("b", json="pass"), record("c", json="pass"), record("d", json="fail"),
             record("e", json="fail")]  # d: not applicable before; e: not a shared case
    flips = compare(after, before)["checks"]["json"]
    assert (flips["lost"], flips["gained"]) == (1, 1)


def test_current_symlink_swaps_atomically_and_history_stacks(tmp_path):
    link = tmp_path / "output" / "current"
    assert lineage.current_run(link) is None
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    a.mkdir(parents=True), b.mkdir()
    lineage.point_current(link, a)
    lineage.point_current(link, b)
    assert link.is_symlink() and lineage.current_run(link) == b.resolve()
    assert not os.readlink(link).startswith("/")  # relative: the output folder can move
    assert [p.name for p in link.parent.iterdir()] == ["current"]
    lineage.save_history(tmp_path / "runs", ["a", "b"])
    assert lineage.history(tmp_path / "runs") == ["a", "b"]


def test_a_second_lock_is_refused_with_the_holder(tmp_path):
    with lineage.Lock(tmp_path):
        with pytest.raises(LoopLocked, match=rf"another loop or rollback is running \(pid {os.getpid()} since"):
            with lineage.Lock(tmp_path):
                pass
    with lineage.Lock(tmp_path):  # released
        pass


def test_loop_exits_5_while_another_loop_holds_the_lock(tmp_path):
    with lineage.Lock(tmp_path / "runs"):
        result = run_smm("stage=loop", f"loop.runs_dir={tmp_path / 'runs'}", f"loop.current={tmp_path / 'current'}",
                         f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path)
    assert result.returncode == 5 and result.stderr.startswith("error: another loop or rollback is running"), result.stderr


def make_run(runs: Path, run_id: str, status: str) -> Path:
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    lineage.write_manifest(run_dir, {"kind": "loop", "run_id": run_id, "status": status, "steps": {}})
    return run_dir


def test_an_interrupted_promotion_is_undone_and_the_deployed_run_kept(tmp_path, monkeypatch):
    from smm.stages.loop import recover

    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    runs = tmp_path / "runs"
    old, new = make_run(runs, "20260101-000000", "promoted"), make_run(runs, "20260102-000000", "promoting")
    lineage.point_current(tmp_path / "current", old)
    lineage.save_history(runs, [old.name])
    cfg = compose_config(f"loop.runs_dir={runs}", f"loop.current={tmp_path / 'current'}")
    recover(cfg)
    assert lineage.current_run(tmp_path / "current") == old.resolve() and lineage.history(runs) == [old.name]
    manifest = lineage.read_manifest(new)
    assert manifest["status"] == "failed" and "loop.from_step=promote" in manifest["error"]

    # cut short after the symlink swap: the promotion is completed instead
    lineage.write_manifest(new, {**manifest, "status": "promoting"})
    lineage.point_current(tmp_path / "current", new)
    recover(cfg)
    assert lineage.read_manifest(new)["status"] == "promoted" and lineage.history(runs) == [old.name, new.name]


def test_dry_run_prints_every_step_with_inputs_and_outputs_and_creates_nothing(tmp_path):
    result = run_smm("stage=loop", "loop.dry_run=true", "model=tiny_qwen2", f"loop.runs_dir={tmp_path / 'runs'}",
                     f"loop.current={tmp_path / 'current'}", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path,
                     env={"DATABASE_URL": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Loop plan (dry run, nothing is done): run ") and "deployed: none" in lines[0]
    steps = [line.split("] ")[1] for line in lines if line.startswith("[")]
    assert steps == ["feedback", "prepare", "train", "export", "evaluate", "promote"]
    assert sum(line.strip().startswith("in:") for line in lines) == 6
    assert sum(line.strip().startswith("out:") for line in lines) == 6
    assert str(tmp_path / "runs") in result.stdout and not (tmp_path / "runs").exists()


def test_pairs_split_keeps_each_prompt_on_one_side_and_follows_the_examples():
    def p(user: str, n: int) -> dict:
        return normalize_pair({"prompt": [{"role": "user", "content": user}], "chosen": f"good {n}", "rejected": f"bad {n}"})

    pairs = [p(f"prompt {i}", n) for i in range(10) for n in range(2)]
    val_example = {"messages": [{"role": "user", "content": "prompt 3"}, {"role": "assistant", "content": "x"}]}
    train_example = {"messages": [{"role": "user", "content": "prompt 4"}, {"role": "assistant", "content": "x"}]}
    train, val = split_pairs(pairs, {prompt_key(train_example["messages"])}, {prompt_key(val_example["messages"])}, 0.8, 1)
    assert len(train) + len(val) == 20 and len(val) == 4
    assert not {x["prompt_id"] for x in train} & {x["prompt_id"] for x in val}
    assert prompt_key(val_example["messages"]) in {x["prompt_id"] for x in val}
    assert prompt_key(train_example["messages"]) in {x["prompt_id"] for x in train}
    with pytest.raises(InvalidPair, match="chosen and rejected are the same answer"):
        normalize_pair({"prompt": [{"role": "user", "content": "q"}], "chosen": "a ", "rejected": "a"})


def test_prepare_splits_pairs_and_reports_their_counts(tmp_path):
    from conftest import REPO

    seeds = [json.loads(line) for line in (REPO / "data" / "seed" / "social_media_examples.jsonl").read_text().splitlines()][:6]
    write_rows(tmp_path / "src" / "examples.jsonl", seeds)
    pairs = [{"prompt": s["messages"][:2], "chosen": s["messages"][2]["content"], "rejected": '{"post": "Buy!"}'} for s in seeds]
    write_rows(tmp_path / "src" / "feedback_dpo.jsonl", pairs + [{"prompt": "bad"}])
    out = tmp_path / "data"
    result = run_smm("stage=prepare", f"data.sources=[{tmp_path / 'src'}]", f"data.output_dir={out}",
                     "data.language_check=off", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    train, val = (out / "train_pairs.jsonl").read_text().splitlines(), (out / "val_pairs.jsonl").read_text().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["metrics"]["train_pairs"], manifest["metrics"]["val_pairs"]) == (len(train), len(val)) == (5, 1)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pairs"]["rejected"]["total"] == 1 and "feedback_dpo.jsonl:7" in stats["pairs"]["rejected"]["lines"][0]
    val_examples = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert {prompt_key(e["messages"]) for e in val_examples} == {json.loads(line)["prompt_id"] for line in val}


def test_a_loop_stopped_mid_step_records_it_and_deploys_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    runs = tmp_path / "runs"
    args = [sys.executable, str(REPO / "run.py"), "stage=loop", "preset=tiny", "loop.feedback=false",
            f"data.sources=[{REPO / 'data' / 'seed'}]", f"loop.runs_dir={runs}", f"loop.current={tmp_path / 'current'}",
            "data.language_check=off", "training.max_steps=100000",  # the train step is still running at the signal
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until the train step runs
        found = list(lineage.loop_runs(runs))
        if found and found[0][1]["steps"].get("train", {}).get("status") == "running":
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr[-2000:]
    ((run_dir, manifest),) = lineage.loop_runs(runs)
    assert manifest["status"] == "failed" and manifest["error"] == "train: interrupted"
    assert manifest["steps"]["prepare"]["status"] == "done" and manifest["steps"]["train"]["status"] == "failed"
    assert lineage.current_run(tmp_path / "current") is None and lineage.history(runs) == []
    assert not (run_dir / "adapter").exists()  # the train stage writes its folder whole or not at all
