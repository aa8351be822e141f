"""``python run.py stage=loop`` end to end on the tiny model, against a real PostgreSQL holding
ratings of every kind, evaluating with llama.cpp in-process and an ``ollama`` stand-in on PATH:
promote the first run, skip when nothing is new, refuse a run that is not better (the deployed
run untouched), resume a failed run from its failed step, and roll back."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, run_smm
from fixtures_gguf import make_fake_ollama

from smm.loop import lineage

SEED = REPO / "data" / "seed" / "social_media_examples.jsonl"


def seed_ratings(db, examples: list[dict], offset: int = 0) -> None:
    """One rating of each kind per four examples: thumbs up, an edit (a DPO pair), a thumbs-down
    next to an approved answer of the same prompt (a pair), and a row the export skips."""
    for i, example in enumerate(examples):
        system, user, answer = (m["content"] for m in example["messages"])
        fields = dict(task=example["task"], language=example["language"], platform=example["platform"],
                      system_prompt=system, user_input=user)
        kind = (i + offset) % 4
        if kind == 0:
            db.rate(db.generation(**fields, model_output=answer), "THUMBS_UP")
        elif kind == 1:
            db.rate(db.generation(**fields, model_output='{"post": "Buy now!!!"}'), "EDITED", edited_output=answer)
        elif kind == 2:
            db.rate(db.generation(**fields, model_output='{"post": "Cheap!!!"}'), "THUMBS_DOWN", comment="pushy")
            db.rate(db.generation(**fields, model_output=answer), "THUMBS_UP")
        else:
            db.rate(db.generation(**{**fields, "task": "no_such_task"}, model_output=answer), "THUMBS_UP")


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_loop_promotes_skips_refuses_resumes_and_rolls_back(feedback_db, tmp_path):
    examples = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines()]
    seed_ratings(feedback_db, examples[:8])
    ollama = make_fake_ollama(tmp_path / "bin")
    runs, current = tmp_path / "output" / "runs", tmp_path / "output" / "current"
    env = {**ollama.env, "DATABASE_URL": feedback_db.url}
    base = ["stage=loop", "preset=tiny", "export=f16", f"data.sources=[{tmp_path / 'feedback'}]",
            f"feedback.output_dir={tmp_path / 'feedback'}", f"feedback.state_file={tmp_path / 'feedback' / 'state.json'}",
            f"export.merged_dir={tmp_path / 'merged'}", f"loop.runs_dir={runs}", f"loop.current={current}",
            "training.max_steps=2", "training.dpo.max_steps=2", "eval.max_cases=2", "eval.max_tokens=8",
            "data.language_check=off", "export.smoke_test=false"]

    def loop(*extra: str, name: str):
        return run_smm(*base, *extra, f"hydra.run.dir={tmp_path / 'hydra' / name}", cwd=tmp_path, env=env)

    # 1. The first run trains SFT then DPO on the feedback and is promoted: nothing is deployed yet.
    first = loop(name="first")
    assert first.returncode == 0, first.stderr[-3000:]
    (run1,) = [d for d, _ in lineage.loop_runs(runs)]
    manifest = lineage.read_manifest(run1)
    assert manifest["status"] == "promoted" and [s["status"] for s in manifest["steps"].values()] == ["done"] * 6
    assert manifest["code"]["commit"] and manifest["data"] and "database_url" not in manifest["config"]["feedback"]
    assert lineage.current_run(current) == run1.resolve() and lineage.history(runs) == [run1.name]
    metrics = json.loads((run1 / "adapter" / "metrics.json").read_text())
    assert metrics["method"] == "sft_then_dpo" and metrics["dpo"]["train_pairs"] + metrics["dpo"]["val_pairs"] == 4
    assert metrics["dpo"]["val_pairs"] == 0 or metrics["dpo"]["val_after"]["logp_margin"] is not None
    assert (run1 / "feedback" / "feedback_dpo.jsonl").is_file() and (run1 / "data" / "train_pairs.jsonl").is_file()
    assert [c["args"][:2] for c in ollama.calls()] == [["create", f"social-media-marketer:{run1.name}"],
                                                         ["cp", f"social-media-marketer:{run1.name}"]]
    assert ollama.calls()[1]["args"][2] == "social-media-marketer:latest"
    assert f"promoted: run {run1.name}" in first.stdout
    assert feedback_db.url.split("@")[0].split(":")[-1] not in (run1 / "manifest.json").read_text()

    # 2. No new feedback: the loop says so, trains nothing and creates no run.
    again = loop(name="again")
    assert again.returncode == 4 and last_line(again).startswith(f"nothing new: no new feedback or data since run {run1.name}")
    assert len(list(lineage.loop_runs(runs))) == 1 and "Training on" not in again.stdout + again.stderr

    # 3. New feedback, but evaluation fails (a missing test file): the run stops at evaluate.
    seed_ratings(feedback_db, examples[8:12], offset=1)
    broken = loop(f"eval.test_file={tmp_path / 'missing.jsonl'}", "eval.test_mode=replace", name="broken")
    assert broken.returncode == 1 and "loop step evaluate failed" in broken.stderr and "loop.from_step=evaluate" in broken.stderr
    run2 = [d for d, _ in lineage.loop_runs(runs)][-1]
    failed = lineage.read_manifest(run2)
    assert failed["status"] == "failed" and failed["steps"]["evaluate"]["status"] == "failed"
    assert lineage.current_run(current) == run1.resolve()

    # 4. Resumed from evaluate: train and export are reused; the same score is no gain, so the gate
    # refuses and the deployed run, its symlink and Ollama's :latest stay as they were.
    calls_before = len(ollama.calls())
    refused = loop("loop.from_step=evaluate", name="refused")
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert last_line(refused).startswith(f"refused: run {run2.name} not promoted, the deployed run ({run1.name}) stays: ")
    assert "loop.min_delta" in refused.stderr and "Training on" not in refused.stdout + refused.stderr
    resumed = lineage.read_manifest(run2)
    assert resumed["status"] == "refused" and resumed["steps"]["train"] == failed["steps"]["train"]
    report = json.loads(Path(resumed["steps"]["evaluate"]["outputs"]["report"]).read_text())
    assert report["comparison"]["n_shared"] == 2 and report["baseline"]["model"]["report"].startswith(str(run1))
    assert lineage.current_run(current) == run1.resolve() and len(ollama.calls()) == calls_before

    # 5. The promote step alone, with a gate that accepts no gain: run 2 is deployed.
    promoted = loop("loop.from_step=promote", f"loop.run_id={run2.name}", "loop.min_delta=0", name="promote")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert lineage.current_run(current) == run2.resolve() and lineage.history(runs) == [run1.name, run2.name]

    # 6. Rollback puts run 1 back, in the symlink and in Ollama.
    rollback = run_smm("stage=rollback", f"loop.runs_dir={runs}", f"loop.current={current}",
                       f"hydra.run.dir={tmp_path / 'hydra' / 'rollback'}", cwd=tmp_path, env=env)
    assert rollback.returncode == 0, rollback.stderr
    assert lineage.current_run(current) == run1.resolve() and lineage.history(runs) == [run1.name]
    assert ollama.calls()[-1]["args"] == ["cp", f"social-media-marketer:{run1.name}", "social-media-marketer:latest"]
    assert lineage.read_manifest(run2)["status"] == "rolled_back"
    nothing_left = run_smm("stage=rollback", f"loop.runs_dir={runs}", f"loop.current={current}",
                           f"hydra.run.dir={tmp_path / 'hydra' / 'rollback2'}", cwd=tmp_path, env=env)
    assert nothing_left.returncode == 1 and "nothing to roll back to" in nothing_left.stderr


def test_warm_start_trains_the_deployed_adapter_on_new_feedback_and_a_replayed_sample(feedback_db, tmp_path):
    examples = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines()]
    seed_ratings(feedback_db, examples[:8])
    ollama = make_fake_ollama(tmp_path / "bin")
    runs, current, seeds = tmp_path / "output" / "runs", tmp_path / "output" / "current", tmp_path / "seed"
    seeds.mkdir()
    (seeds / "seed.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[20:30]), encoding="utf-8")
    env = {**ollama.env, "DATABASE_URL": feedback_db.url}
    base = ["stage=loop", "preset=tiny", "export=f16", f"data.sources=[{seeds},{tmp_path / 'feedback'}]",
            f"feedback.output_dir={tmp_path / 'feedback'}", f"feedback.state_file={tmp_path / 'feedback' / 'state.json'}",
            f"export.merged_dir={tmp_path / 'merged'}", f"loop.runs_dir={runs}", f"loop.current={current}",
            "training.max_steps=2", "training.dpo.max_steps=2", "training.kto.max_steps=2", "eval.max_cases=2",
            "eval.max_tokens=8", "data.language_check=off", "export.smoke_test=false", "loop.warm_start=true",
            "loop.replay=0.5", "loop.min_delta=-1", "loop.warm_lr_scale=0.5"]

    def loop(name: str):
        return run_smm(*base, f"hydra.run.dir={tmp_path / 'hydra' / name}", cwd=tmp_path, env=env)

    first = loop("first")  # nothing deployed: a full run
    assert first.returncode == 0, first.stderr[-3000:]
    (run1,) = [d for d, _ in lineage.loop_runs(runs)]
    assert "replayed" not in lineage.read_manifest(run1)["steps"]["feedback"]["metrics"]
    assert json.loads((run1 / "adapter" / "metrics.json").read_text())["init_adapter"] is None

    # two new ratings, one a thumbs-down no approved answer pairs with
    system, user, answer = (m["content"] for m in examples[12]["messages"])
    fields = dict(task=examples[12]["task"], language=examples[12]["language"], platform=examples[12]["platform"],
                  system_prompt=system, user_input=user)
    feedback_db.rate(feedback_db.generation(**fields, model_output=answer), "THUMBS_UP")
    feedback_db.rate(feedback_db.generation(**{**fields, "user_input": user + " Please."}, model_output='{"x": 1}'),
                     "THUMBS_DOWN")
    second = loop("second")
    assert second.returncode == 0, second.stderr[-3000:]
    run2 = [d for d, _ in lineage.loop_runs(runs)][-1]
    step = lineage.read_manifest(run2)["steps"]["feedback"]
    assert step["outputs"]["warm_start_from"] == run1.name
    # only the new lines: one SFT example, two KTO examples, no pair; half of 10 seeds + the 6 earlier SFT lines replayed
    assert step["metrics"] == {"feedback_sft_lines": 1, "feedback_dpo_lines": 0,
                                                          "feedback_kto_lines": 2, "replayed": 8}
    metrics = json.loads((run2 / "adapter" / "metrics.json").read_text())
    assert metrics["init_adapter"] == str(run1 / "adapter")
    rates = [lineage.read_manifest(run)["config"]["training"]["learning_rate"] for run in (run1, run2)]
    assert rates[1] == rates[0] * 0.5  # a warm start continues at loop.warm_lr_scale of the rate
    assert metrics["method"] == "sft_then_kto" and "1 thumbs-down answers have no approved answer" in metrics["method_reason"]
    stats = json.loads((run2 / "data" / "stats.json").read_text())
    assert stats["files"] == [str(run2 / "feedback" / "feedback_sft.jsonl"), str(run2 / "replay" / "replay.jsonl")]
