"""Tasks as configuration (conf/tasks/*.yaml): bad task files stop in one line naming the file and
key, and a seventh task (examples/comment_reply) added in a temp task folder, with no code change,
goes through prepare → train (tiny model) → export → evaluate → chat."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_config, run_smm

from smm.config import validate
from smm.errors import ConfigError
from smm.tasks import DEFAULT_TASKS_DIR, TASKS, load_registry, use

EXAMPLE = REPO / "examples" / "comment_reply"


def task_folder(tmp_path: Path, extra: Path | None = None) -> Path:
    """A copy of conf/tasks (plus ``extra``, a task file) in ``tmp_path/tasks``."""
    folder = tmp_path / "tasks"
    shutil.copytree(DEFAULT_TASKS_DIR, folder)
    if extra is not None:
        shutil.copy(extra, folder / extra.name)
    return folder


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_the_six_tasks_load_from_conf_tasks_in_their_order():
    registry = load_registry()
    assert list(registry.tasks) == ["post_generation", "hashtags", "ab_variations", "sentiment", "posting_times", "brand_voice"]
    assert registry.platform_limits == {"facebook": 63206, "linkedin": 3000, "instagram": 2200, "x": 280, "threads": 500}
    assert all(Path(t.source).parent == DEFAULT_TASKS_DIR for t in registry.tasks.values())
    assert load_registry(DEFAULT_TASKS_DIR) is registry  # read once


def test_tasks_dir_composes_and_a_missing_folder_is_one_line(tmp_path):
    assert compose_config().tasks_dir is None
    cfg = compose_config(f"tasks_dir={task_folder(tmp_path)}")
    try:
        validate(cfg)
        assert TASKS["sentiment"].source == str(tmp_path / "tasks" / "sentiment.yaml")
    finally:
        use(DEFAULT_TASKS_DIR)
    with pytest.raises(ConfigError, match=rf"^tasks_dir: {tmp_path / 'nope'} is not a folder"):
        validate(compose_config(f"tasks_dir={tmp_path / 'nope'}"))


BAD_FILES = [
    ("sentiment.yaml", lambda d: d["schema"]["properties"]["score"].update(type="numeric"),
     "sentiment.yaml: schema: not a valid JSON Schema: properties.score.type: 'numeric' is not valid"),
    ("post_generation.yaml", lambda d: d.update(published_fields=["post", "caption"]),
     "post_generation.yaml: published_fields: 'caption' is not in the schema"),
    ("_registry.yaml", lambda d: d["platforms"].update(threads=None),
     "_registry.yaml: platforms.threads: no character limit (None); give a whole number > 0"),
    ("hashtags.yaml", lambda d: d["checks"].append("spelling"),
     "hashtags.yaml: checks: 'spelling' is not a check (checks: json, schema, language, length, hashtags, enums, "
     "variations, expect, echo, facts, numbers, loops, formality, timezone)"),
    ("hashtags.yaml", lambda d: d["checks"].append("length"),
     "hashtags.yaml: checks: 'length' cannot apply to this task (published_fields)"),
    ("brand_voice.yaml", lambda d: d.update(example={"adapted_post": "Hi"}),
     "brand_voice.yaml: example: breaks the schema: $: 'voice_traits' is a required property"),
    ("brand_voice.yaml", lambda d: d.update(tone="warm"),
     "brand_voice.yaml: tone: unknown key (keys: "),
]


@pytest.mark.parametrize("name,change,message", BAD_FILES, ids=[f"{n}-{m.split(': ')[1]}" for n, _, m in BAD_FILES])
def test_a_bad_task_file_fails_naming_file_and_key(tmp_path, name, change, message):
    folder = task_folder(tmp_path)
    edit(folder / name, change)
    with pytest.raises(ConfigError) as error:
        load_registry(folder)
    assert str(error.value).startswith(f"{folder / name}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_bad_task_file_stops_run_py_in_one_line(tmp_path):
    folder = task_folder(tmp_path)
    edit(folder / "post_generation.yaml", lambda d: d.update(published_fields=["caption"]))
    result = run_smm("stage=prepare", f"tasks_dir={folder}", f"data.output_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {folder / 'post_generation.yaml'}: published_fields: 'caption' is not in the schema"
    assert not (tmp_path / "out").exists()


def test_the_example_task_is_configuration_only():
    """comment_reply is a task file, seeds and cases: nothing in smm/ names it."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "smm").rglob("*.py"))
    assert "comment_reply" not in code
    seeds = [json.loads(line) for line in (EXAMPLE / "seed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(row["language"] for row in seeds) == ["de", "en", "es", "fr", "pt"]


def test_a_seventh_task_trains_exports_evaluates_and_chats_without_code(tmp_path, tiny_model_dir):
    folder = task_folder(tmp_path, EXAMPLE / "comment_reply.yaml")
    task = load_registry(folder).tasks["comment_reply"]
    root = tmp_path / "run"
    common = (f"tasks_dir={folder}", "preset=tiny", f"data.output_dir={root / 'data'}", f"training.output_dir={root / 'adapter'}",
              f"training.checkpoint_dir={root / 'checkpoints'}", f"export.merged_dir={root / 'merged'}",
              f"export.output_dir={root / 'gguf'}", f"eval.output_dir={root / 'eval'}", "eval.constrained=on")
    result = run_smm("stage=pipeline", *common, f"data.sources=[{REPO / 'data' / 'seed'},{EXAMPLE / 'seed.jsonl'}]",
                     "training.max_steps=4", "eval.max_cases=7", "eval.max_tokens=48", f"hydra.run.dir={root / 'hydra'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    stats = json.loads((root / "data" / "stats.json").read_text(encoding="utf-8"))
    assert "comment_reply" in json.dumps(stats)  # prepare took the new task's seeds
    train = [json.loads(line) for line in (root / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [json.loads(line) for line in (root / "data" / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(row["task"] == "comment_reply" for row in train + val) == 5
    contract = load_registry(folder).contract_hash
    assert contract != load_registry().contract_hash
    for manifest in (root / "data" / "manifest.json", root / "adapter" / "manifest.json", root / "gguf" / "manifest.json"):
        assert json.loads(manifest.read_text(encoding="utf-8"))["task_contract"] == contract

    schema = json.loads((root / "gguf" / "schemas" / "comment_reply.json").read_text(encoding="utf-8"))
    assert schema == task.schema  # what the app sends in Ollama's format / response_format

    (report_dir,) = [p for p in (root / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    (case,) = [c for c in report["cases"] if c["task"] == "comment_reply"]  # one of the task file's eval_cases
    assert case["id"].endswith("-comment_reply-01")
    applicable = {name for name, check in case["checks"].items() if check["status"] != "n/a"}
    assert {"json", "schema", "enums", "expect"} <= set(case["checks"]) and "hashtags" not in applicable

    chat = run_smm("stage=chat", *common, "chat.task=comment_reply", "chat.language=en", "chat.platform=x",
                   'chat.prompt="Reply to this comment on X: the croissants were lovely!"', f"hydra.run.dir={root / 'chat'}",
                   cwd=tmp_path, timeout=300)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "task comment_reply, language en, platform x, answers constrained" in chat.stdout + chat.stderr
    assert "[constrained]" in chat.stdout and "checks: json pass, schema pass" in chat.stdout  # the grammar held the schema


def test_the_gate_says_when_deployed_and_candidate_were_trained_on_different_contracts(tmp_path):
    from smm.loop import lineage
    from smm.loop.gate import contract_note
    from smm.stages.loop import promote

    assert contract_note("1176f5bcdb9f48be", "1176f5bcdb9f48be") is None
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    lineage.write_manifest(runs / "old", {"kind": "loop", "status": "promoted", "task_contract": "aaaaaaaaaaaaaaaa"})
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"score": 0.5, "comparison": {"score": 0.5, "baseline_score": 0.6, "delta": -0.1, "checks": {}}}))
    manifest = {"deployed_before": "old", "task_contract": "bbbbbbbbbbbbbbbb", "steps": {"evaluate": {"outputs": {"report": str(report)}}}}
    cfg = compose_config(f"loop.runs_dir={runs}", f"loop.current={tmp_path / 'current'}")
    gate = promote(cfg, runs / "new", manifest)["metrics"]["gate"]
    assert not gate["passed"] and gate["notes"] == [
        "the deployed model was trained on task contract aaaaaaaaaaaaaaaa, this run on bbbbbbbbbbbbbbbb: the tasks' "
        "prompts or schemas changed, so the scores compare answers to different task definitions"]
    lineage.write_manifest(runs / "old", {"kind": "loop", "status": "promoted", "task_contract": "bbbbbbbbbbbbbbbb"})
    assert promote(cfg, runs / "new", manifest)["metrics"]["gate"]["notes"] == []


def test_feedback_maps_rows_of_a_task_that_only_a_task_file_defines(tmp_path):
    from smm.feedback.mapping import Mapper, sft_example

    use(task_folder(tmp_path, EXAMPLE / "comment_reply.yaml"))
    try:
        task = TASKS["comment_reply"]
        mapper = Mapper()
        prompt = mapper.prompt("comment_reply", "en-US", "Instagram", task.system_prompt, "Reply to: love the new tart!")
        text, _ = mapper.answer(task, '{"reply": "Thank you, we love it too!", "tone": "grateful", "escalate": false}', "empty", "invalid")
        example = sft_example(prompt, text, {})
        assert (example["task"], example["language"], example["platform"]) == ("comment_reply", "en", "instagram")
        assert example["messages"][0] == {"role": "system", "content": task.system_prompt}
        with pytest.raises(Exception, match="invalid"):
            mapper.answer(task, '{"reply": "Thanks!", "tone": "smug", "escalate": false}', "empty", "invalid")
    finally:
        use(DEFAULT_TASKS_DIR)
    assert "comment_reply" not in TASKS


def test_the_readme_request_example_is_the_task_files_schema():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    body = json.loads(readme.split("that is, the body\n\n```json\n", 1)[1].split("```", 1)[0])
    schema = json.loads(json.dumps(TASKS["post_generation"].schema).replace(json.dumps(TASKS["post_generation"].schema["properties"]["hashtags"]["items"]["pattern"]), '"…"'))
    assert body["format"] == schema  # the README spells the hashtag pattern as "…"
