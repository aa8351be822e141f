"""The feedback export against a real PostgreSQL server: mapping rules, bad rows, incrementality."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from smm.config import FeedbackConfig
from smm.errors import ConfigError
from smm.feedback import mapping
from smm.feedback.collect import collect_feedback
from smm.feedback.output import DPO_FILE, KTO_FILE, SFT_FILE, JsonlOutput
from smm.tasks import TASKS

POST = json.dumps(TASKS["post_generation"].example, ensure_ascii=False)
BETTER_POST = json.dumps({"post": "Warm bread, every morning at 7.", "hashtags": ["#bakery"], "call_to_action": "Drop by!"})
HASHTAGS = json.dumps(TASKS["hashtags"].example)


def export(db, out: Path, **overrides):
    cfg = OmegaConf.structured(FeedbackConfig)
    cfg.output_dir, cfg.state_file = str(out), str(out / ".export_state.json")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return collect_feedback(cfg, db.url, progress=False)


def read(out: Path, name: str) -> list[dict]:
    path = out / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_thumbs_up_becomes_an_sft_example_in_the_seed_format(feedback_db, tmp_path):
    gid = feedback_db.generation(task="post_generation", language="de-DE", platform="Instagram",
                                 user_input="Schreib einen Post über Brot", model_output=f"  {POST}\n")
    fid = feedback_db.rate(gid, "thumbs_up")
    result = export(feedback_db, tmp_path)
    [example] = read(tmp_path, SFT_FILE)
    system, user, assistant = example["messages"]
    assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
    assert system["content"] == TASKS["post_generation"].system_prompt  # NULL system prompt = the registry's
    assert user["content"] == "Schreib einen Post über Brot"
    assert json.loads(assistant["content"]) == TASKS["post_generation"].example
    assert (example["task"], example["language"], example["platform"]) == ("post_generation", "de", "instagram")
    assert (example["generation_id"], example["feedback_id"], example["rating"]) == (gid, fid, "THUMBS_UP")
    assert read(tmp_path, DPO_FILE) == []
    assert (result.sft, result.dpo, result.skipped.total) == (1, 0, 0)


def test_edit_gives_an_sft_example_and_a_dpo_pair(feedback_db, tmp_path):
    gid = feedback_db.generation(model_output=POST, system_prompt="You write for Bäckerei Kühn.")
    feedback_db.rate(gid, "EDITED", edited_output=BETTER_POST, comment="warmer tone")
    export(feedback_db, tmp_path)
    [sft] = read(tmp_path, SFT_FILE)
    [pair] = read(tmp_path, DPO_FILE)
    assert sft["messages"][0]["content"] == "You write for Bäckerei Kühn."
    assert json.loads(sft["messages"][2]["content"]) == json.loads(BETTER_POST)
    assert pair["prompt"] == sft["messages"][:2]
    assert json.loads(pair["chosen"]) == json.loads(BETTER_POST)
    assert json.loads(pair["rejected"]) == json.loads(POST)
    assert (pair["pair"], pair["comment"], pair["task"]) == ("edited", "warmer tone", "post_generation")


def test_thumbs_down_is_rejected_only_next_to_an_approved_answer(feedback_db, tmp_path):
    bad = feedback_db.generation(user_input="Post about our new cake", model_output='{"post": "meh"}')
    alone = feedback_db.generation(user_input="Post about coffee", model_output='{"post": "boring"}')
    down = feedback_db.rate(bad, "THUMBS_DOWN", comment="too short")
    feedback_db.rate(alone, "THUMBS_DOWN")
    first = export(feedback_db, tmp_path)
    assert (first.sft, first.dpo, first.latest["THUMBS_DOWN"]) == (0, 0, 2)

    good = feedback_db.generation(user_input="Post about our new cake", model_output=POST)
    other_platform = feedback_db.generation(user_input="Post about our new cake", platform="x", model_output=POST)
    up = feedback_db.rate(good, "THUMBS_UP")
    feedback_db.rate(other_platform, "THUMBS_UP")
    second = export(feedback_db, tmp_path)
    assert (second.sft, second.dpo) == (2, 1)
    [pair] = read(tmp_path, DPO_FILE)
    assert (pair["pair"], pair["rejected"], pair["comment"]) == ("thumbs_down", '{"post": "meh"}', "too short")
    assert json.loads(pair["chosen"]) == json.loads(POST)
    assert (pair["rejected_feedback_id"], pair["chosen_feedback_id"]) == (down, up)
    assert pair["platform"] == "instagram"  # the same prompt includes the platform

    late = feedback_db.rate(feedback_db.generation(user_input="Post about our new cake", model_output="nope"), "THUMBS_DOWN")
    third = export(feedback_db, tmp_path)
    # a new thumbs-down meets the approved answer of an earlier export; the prompt's pairs are made anew
    assert (third.sft, third.dpo, third.dropped) == (0, 2, 1)
    assert [(p["rejected_feedback_id"], p["chosen_feedback_id"]) for p in read(tmp_path, DPO_FILE)] == [(down, up), (late, up)]


def test_every_rated_answer_is_a_kto_example_and_a_lone_thumbs_down_is_kept(feedback_db, tmp_path):
    up = feedback_db.rate(feedback_db.generation(user_input="Post about bread", model_output=POST), "THUMBS_UP")
    edited = feedback_db.rate(feedback_db.generation(user_input="Post about rolls", model_output=POST), "EDITED",
                              edited_output=BETTER_POST)
    lone = feedback_db.rate(feedback_db.generation(user_input="Post about cake, call +49 171 2345678",
                                                   model_output='{"post": "meh"}'), "THUMBS_DOWN")
    result = export(feedback_db, tmp_path)
    assert read(tmp_path, DPO_FILE)[0]["pair"] == "edited"  # the thumbs-down has no approved answer: no pair
    kto = [(row["feedback_id"], row["label"], row["completion"]) for row in read(tmp_path, KTO_FILE)]
    assert sorted(kto) == sorted([(up, True, POST), (edited, True, BETTER_POST), (edited, False, POST),
                                  (lone, False, '{"post": "meh"}')])
    [down] = [row for row in read(tmp_path, KTO_FILE) if row["feedback_id"] == lone]
    assert "2345678" not in down["prompt"][1]["content"]  # a written thumbs-down's prompt is scrubbed too
    assert result.by("kto", 1) == {"desirable": 2, "undesirable": 2}

    # an incremental export pairing the thumbs-down keeps its KTO line; a re-rated generation replaces its own
    feedback_db.rate(feedback_db.generation(user_input="Post about cake, call +49 171 2345678", model_output=POST), "THUMBS_UP")
    again = export(feedback_db, tmp_path)
    assert again.dpo == 1 and again.kto == 1
    assert [row["feedback_id"] for row in read(tmp_path, KTO_FILE)].count(lone) == 1


def test_a_thumbs_down_pairs_with_the_newest_approved_or_edited_answer(feedback_db, tmp_path):
    prompt = "Hashtags for a flower shop"
    older = feedback_db.generation(task="hashtags", platform=None, user_input=prompt, model_output=HASHTAGS)
    newer = feedback_db.generation(task="hashtags", platform=None, user_input=prompt, model_output='{"primary": []}')
    bad = feedback_db.generation(task="hashtags", platform=None, user_input=prompt, model_output="#flowers")
    feedback_db.rate(older, "THUMBS_UP")
    edit = json.dumps({"primary": ["#flowers"], "secondary": [], "trending": [], "niche": [], "strategy": "Local."})
    feedback_db.rate(newer, "EDITED", edited_output=edit)
    feedback_db.rate(bad, "THUMBS_DOWN")
    export(feedback_db, tmp_path)
    pairs = {p["pair"]: p for p in read(tmp_path, DPO_FILE)}
    assert json.loads(pairs["thumbs_down"]["chosen"]) == json.loads(edit)
    assert pairs["thumbs_down"]["rejected"] == "#flowers"
    assert pairs["thumbs_down"]["platform"] is None  # hashtags publish nothing: NULL platform is fine


def test_the_latest_rating_of_a_generation_wins(feedback_db, tmp_path):
    liked_then_disliked = feedback_db.generation(model_output=POST, user_input="A")
    disliked_then_edited = feedback_db.generation(model_output='{"post": "x"}', user_input="B")
    feedback_db.rate(liked_then_disliked, "THUMBS_UP", created_at="2025-03-01T10:00:00Z")
    feedback_db.rate(liked_then_disliked, "THUMBS_DOWN", created_at="2025-03-02T10:00:00Z")
    feedback_db.rate(disliked_then_edited, "THUMBS_DOWN", created_at="2025-03-01T10:00:00Z")
    latest = feedback_db.rate(disliked_then_edited, "EDITED", edited_output=BETTER_POST, created_at="2025-03-03T10:00:00Z")
    result = export(feedback_db, tmp_path)
    [sft] = read(tmp_path, SFT_FILE)
    assert (sft["feedback_id"], sft["rating"]) == (latest, "EDITED")
    assert (result.in_window, result.latest["THUMBS_DOWN"], result.latest["EDITED"]) == (4, 1, 1)


def test_a_new_rating_replaces_what_an_earlier_export_wrote(feedback_db, tmp_path):
    gid = feedback_db.generation(model_output=POST)
    kept = feedback_db.generation(model_output=POST, user_input="kept")
    feedback_db.rate(gid, "THUMBS_UP")
    feedback_db.rate(kept, "THUMBS_UP")
    export(feedback_db, tmp_path)
    assert len(read(tmp_path, SFT_FILE)) == 2
    feedback_db.rate(gid, "EDITED", edited_output=BETTER_POST)
    result = export(feedback_db, tmp_path)
    sft = read(tmp_path, SFT_FILE)
    assert [(e["generation_id"], e["rating"]) for e in sft] == [(kept, "THUMBS_UP"), (gid, "EDITED")]
    assert (result.dropped, result.sft, result.dpo) == (2, 1, 1)  # its SFT line and its KTO line


def test_bad_rows_are_skipped_and_counted_by_id(feedback_db, tmp_path):
    feedback_db.execute("ALTER TABLE feedback DROP CONSTRAINT feedback_generation_id_fkey")
    g = feedback_db.generation
    cases = {
        mapping.EMPTY_OUTPUT: [feedback_db.rate(g(model_output=None), "THUMBS_UP"),
                               feedback_db.rate(g(model_output="   "), "THUMBS_UP"),
                               feedback_db.rate(g(model_output=""), "THUMBS_DOWN")],
        mapping.EMPTY_EDIT: [feedback_db.rate(g(model_output=POST), "EDITED", edited_output=None),
                             feedback_db.rate(g(model_output=POST), "EDITED", edited_output=" \n")],
        mapping.UNKNOWN_RATING: [feedback_db.rate(g(model_output=POST), "LOVE_IT")],
        mapping.UNKNOWN_TASK: [feedback_db.rate(g(task="tiktok_dance", model_output=POST), "THUMBS_UP")],
        mapping.INVALID_ANSWER: [feedback_db.rate(g(model_output="Here is your post: Fresh bread!"), "THUMBS_UP"),
                                 feedback_db.rate(g(model_output='{"post": "no hashtags"}'), "THUMBS_UP")],
        mapping.INVALID_EDIT: [feedback_db.rate(g(model_output=POST), "EDITED", edited_output="{not json")],
        mapping.UNKNOWN_LANGUAGE: [feedback_db.rate(g(language="it", model_output=POST), "THUMBS_UP")],
        mapping.UNKNOWN_PLATFORM: [feedback_db.rate(g(platform="myspace", model_output=POST), "THUMBS_UP")],
        mapping.MISSING_PLATFORM: [feedback_db.rate(g(platform=None, model_output=POST), "THUMBS_UP")],
        mapping.EMPTY_INPUT: [feedback_db.rate(g(user_input=" ", model_output=POST), "THUMBS_UP")],
        mapping.GENERATION_MISSING: [feedback_db.rate(999_999, "THUMBS_UP")],
    }
    good = feedback_db.rate(g(model_output=POST), "THUMBS_UP")
    result = export(feedback_db, tmp_path)
    assert {reason: result.skipped.ids[reason] for reason in result.skipped.counts} == cases
    assert result.skipped.detail[mapping.INVALID_ANSWER].startswith(f"id {cases[mapping.INVALID_ANSWER][0]}: not valid JSON")
    assert [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [good]


def test_edits_without_a_useful_pair_still_give_sft_examples(feedback_db, tmp_path):
    no_original = feedback_db.rate(feedback_db.generation(model_output=None), "EDITED", edited_output=POST)
    unchanged = feedback_db.rate(feedback_db.generation(model_output=POST), "EDITED",
                                 edited_output=json.dumps(json.loads(POST), indent=2))
    result = export(feedback_db, tmp_path)
    assert (result.sft, result.dpo) == (2, 0)
    assert result.no_pair.ids == {mapping.NO_ORIGINAL: [no_original], mapping.UNCHANGED_EDIT: [unchanged]}


def test_personal_data_is_scrubbed_unless_turned_off(feedback_db, tmp_path):
    answer = json.dumps({"post": "Questions? anna@example.com or +49 30 1234567. Thanks @jane_doe!",
                         "hashtags": ["#bakery"], "call_to_action": "Follow @BaeckereiKuehn"})
    gid = feedback_db.generation(user_input="Reply to @max_mustermann, phone 0171 1234567", model_output=answer)
    feedback_db.rate(gid, "THUMBS_UP")
    export(feedback_db, tmp_path / "scrubbed", keep_handles=["BaeckereiKuehn"])
    [example] = read(tmp_path / "scrubbed", SFT_FILE)
    assert example["messages"][1]["content"] == "Reply to @user, phone [PHONE]"
    assert json.loads(example["messages"][2]["content"]) == {
        "post": "Questions? [EMAIL] or [PHONE]. Thanks @user!", "hashtags": ["#bakery"],
        "call_to_action": "Follow @BaeckereiKuehn"}
    export(feedback_db, tmp_path / "raw", scrub_pii=False)
    [raw] = read(tmp_path / "raw", SFT_FILE)
    assert raw["messages"][2]["content"] == answer


NASTY = [
    "'); DROP TABLE feedback; --",
    'Robert"); DELETE FROM generations WHERE (\'1\'=\'1',
    "50% off \\ backslash \\n not a newline, real\nnewline\ttab, $1 %s %(x)s {0} :name",
    "Brötchen, Café, niño, ação — «très» „gut“ ✨🥐",
    "新しいパン屋 مخبز جديد Новая пекарня",
]


@pytest.mark.parametrize("text", NASTY)
def test_injection_looking_and_multilingual_text_round_trips(feedback_db, tmp_path, text):
    answer = json.dumps({"post": text, "hashtags": ["#bäckerei"], "call_to_action": text}, ensure_ascii=False)
    gid = feedback_db.generation(user_input=text, system_prompt=text, model_output=answer)
    feedback_db.rate(gid, "EDITED", edited_output=answer.replace("#bäckerei", "#brot"), comment=text)
    export(feedback_db, tmp_path, scrub_pii=False)
    [sft] = read(tmp_path, SFT_FILE)
    [pair] = read(tmp_path, DPO_FILE)
    assert [m["content"] for m in sft["messages"][:2]] == [text.strip(), text.strip()]
    assert json.loads(pair["rejected"]) == json.loads(answer) and pair["comment"] == text
    with feedback_db.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM generations), (SELECT count(*) FROM feedback)")
        assert cur.fetchone() == (1, 1)


def test_second_run_adds_nothing_and_new_rows_are_appended(feedback_db, tmp_path):
    for i in range(3):
        feedback_db.rate(feedback_db.generation(model_output=POST, user_input=f"post {i}"), "THUMBS_UP")
    edited = feedback_db.generation(model_output='{"post": "x"}', user_input="edit me")
    feedback_db.rate(edited, "EDITED", edited_output=POST)
    first = export(feedback_db, tmp_path)
    before = snapshot(tmp_path)
    second = export(feedback_db, tmp_path)
    assert (first.sft, first.dpo, second.sft, second.dpo, second.in_window) == (4, 1, 0, 0, 0)
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "manifest.json"} == before

    new = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="post 3"), "THUMBS_UP")
    third = export(feedback_db, tmp_path)
    sft = read(tmp_path, SFT_FILE)
    assert (third.sft, len(sft), sft[-1]["feedback_id"]) == (1, 5, new)
    assert (tmp_path / SFT_FILE).read_bytes().startswith(before[SFT_FILE])
    assert len({e["feedback_id"] for e in sft}) == 5
    state = json.loads((tmp_path / ".export_state.json").read_text())
    assert state["mark"]["id"] == new and state["files"][SFT_FILE]["lines"] == 5


def test_full_rebuilds_the_files_without_duplicates(feedback_db, tmp_path):
    for i in range(2):
        feedback_db.rate(feedback_db.generation(model_output=POST, user_input=f"post {i}"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    feedback_db.rate(feedback_db.generation(model_output=POST, user_input="post 2"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    incremental = read(tmp_path, SFT_FILE)
    result = export(feedback_db, tmp_path, full=True)
    assert result.full and result.sft == 3
    assert sorted(e["feedback_id"] for e in read(tmp_path, SFT_FILE)) == sorted(e["feedback_id"] for e in incremental)


def test_since_and_limit_choose_the_window(feedback_db, tmp_path):
    ids = [feedback_db.rate(feedback_db.generation(model_output=POST, user_input=f"post {day}"), "THUMBS_UP",
                            created_at=f"2025-01-{day:02d}T12:00:00+00:00") for day in range(1, 7)]
    export(feedback_db, tmp_path / "since", since="2025-01-04")
    assert [e["feedback_id"] for e in read(tmp_path / "since", SFT_FILE)] == ids[3:]

    out = tmp_path / "limit"
    runs = [export(feedback_db, out, limit=4).sft, export(feedback_db, out, limit=4).sft, export(feedback_db, out, limit=4).sft]
    assert runs == [4, 2, 0]
    assert sorted(e["feedback_id"] for e in read(out, SFT_FILE)) == ids


def test_since_must_be_a_timestamp(feedback_db, tmp_path):
    with pytest.raises(ConfigError, match="feedback.since: 'last week' is not an ISO date"):
        export(feedback_db, tmp_path, since="last week")


def test_an_interrupted_export_leaves_files_and_state_intact(feedback_db, tmp_path, monkeypatch):
    feedback_db.rate(feedback_db.generation(model_output=POST, user_input="first"), "EDITED", edited_output=BETTER_POST)
    export(feedback_db, tmp_path)
    before = snapshot(tmp_path)
    for i in range(3):
        feedback_db.rate(feedback_db.generation(model_output=POST, user_input=f"later {i}"), "THUMBS_UP")
    original_write, calls = JsonlOutput.write, []

    def failing_write(self, example):
        calls.append(example)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original_write(self, example)

    monkeypatch.setattr(JsonlOutput, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        export(feedback_db, tmp_path)
    assert snapshot(tmp_path) == before  # no temp files left, nothing replaced
    monkeypatch.undo()
    assert export(feedback_db, tmp_path).sft == 3


def test_outputs_that_no_longer_match_the_state_are_repaired(feedback_db, tmp_path):
    feedback_db.rate(feedback_db.generation(model_output=POST, user_input="one"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    good = (tmp_path / SFT_FILE).read_bytes()
    # a crash between the two renames leaves a longer SFT file than the state recorded
    (tmp_path / SFT_FILE).write_bytes(good + b'{"half": "written"}\n')
    new = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="two"), "THUMBS_UP")
    assert export(feedback_db, tmp_path).sft == 1
    assert [e["feedback_id"] for e in read(tmp_path, SFT_FILE)][-1] == new and len(read(tmp_path, SFT_FILE)) == 2
    # a deleted file makes the next export a full one
    (tmp_path / SFT_FILE).unlink()
    result = export(feedback_db, tmp_path)
    assert result.full and len(read(tmp_path, SFT_FILE)) == 2


OTHER_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app."AI Outputs" (uid BIGINT PRIMARY KEY, kind TEXT, lang TEXT, network TEXT, sys TEXT, prompt TEXT,
                               answer TEXT, model TEXT);
CREATE TYPE app.verdict AS ENUM ('THUMBS_UP', 'THUMBS_DOWN', 'EDITED');
CREATE TABLE app.ratings (rid BIGINT PRIMARY KEY, output_uid BIGINT, verdict app.verdict, fixed TEXT, note TEXT,
                          "ratedAt" TIMESTAMP NOT NULL);
"""
OTHER_NAMES = {
    "tables.generations": "app.AI Outputs", "tables.feedback": "app.ratings",
    "columns.generation_id": "uid", "columns.task": "kind", "columns.language": "lang", "columns.platform": "network",
    "columns.system_prompt": "sys", "columns.user_input": "prompt", "columns.model_output": "answer",
    "columns.model_name": "model", "columns.feedback_id": "rid", "columns.feedback_generation_id": "output_uid",
    "columns.rating": "verdict", "columns.edited_output": "fixed", "columns.comment": "note",
    "columns.created_at": "ratedAt",
}


def test_another_schema_maps_by_configuration_only(postgres_server, tmp_path):
    db = postgres_server.create_database(OTHER_SCHEMA)
    try:
        db.execute("""INSERT INTO app."AI Outputs" VALUES (7, 'post_generation', 'fr', 'linkedin', NULL, 'Un post', %s, 'm'),
                      (8, 'post_generation', 'fr', 'linkedin', NULL, 'Un post', '{"post": "bof"}', 'm')""", (POST,))
        db.execute("""INSERT INTO app.ratings VALUES (1, 7, 'EDITED', %s, 'mieux', '2025-02-01 10:00'),
                      (2, 8, 'THUMBS_DOWN', NULL, NULL, '2025-02-01 11:00')""", (BETTER_POST,))
        result = export(db, tmp_path, **OTHER_NAMES)
        assert (result.sft, result.dpo) == (1, 2)
        [sft] = read(tmp_path, SFT_FILE)
        assert (sft["language"], sft["platform"], sft["generation_id"], sft["feedback_id"]) == ("fr", "linkedin", 7, 1)
        assert sorted(p["pair"] for p in read(tmp_path, DPO_FILE)) == ["edited", "thumbs_down"]
        db.execute("INSERT INTO app.ratings VALUES (3, 7, 'THUMBS_UP', NULL, NULL, '2025-02-02 09:00')")
        again = export(db, tmp_path, **OTHER_NAMES)
        # re-rated: its SFT example, both pairs it was in and its two KTO lines are replaced; the
        # thumbs-down pairs again and keeps its KTO line
        assert (again.sft, again.dpo, again.dropped) == (1, 1, 5)
        assert sorted((r["generation_id"], r["label"]) for r in read(tmp_path, KTO_FILE)) == [(7, True), (8, False)]
        assert [(p["pair"], p["chosen_feedback_id"]) for p in read(tmp_path, DPO_FILE)] == [("thumbs_down", 3)]
    finally:
        db.close()
        postgres_server.drop_database(db.name)


def test_personal_data_behind_json_escapes_is_scrubbed(feedback_db, tmp_path):
    # PHP writes "/" as "\/" and some encoders write "@" as "\u0040": the raw text hides both
    answers = ['{"post": "Call 030\\/123\\/4567", "hashtags": ["#bakery"], "call_to_action": "Go"}',
               '{"post": "Mail anna\\u0040example.com", "hashtags": ["#bakery"], "call_to_action": "Go"}']
    for i, answer in enumerate(answers):
        feedback_db.rate(feedback_db.generation(model_output=answer, user_input=f"post {i}"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    posts = [json.loads(e["messages"][2]["content"])["post"] for e in read(tmp_path, SFT_FILE)]
    assert sorted(posts) == ["Call [PHONE]", "Mail [EMAIL]"]


def test_lone_surrogates_and_nan_in_answers_are_rejected_by_id(feedback_db, tmp_path):
    surrogate = '{"post": "broken \\ud800 text", "hashtags": ["#bakery"], "call_to_action": "Go"}'
    sentiment = dict(TASKS["sentiment"].example)
    nan = json.dumps({**sentiment, "score": float("nan")})
    g = feedback_db.generation
    bad = [feedback_db.rate(g(model_output=surrogate), "THUMBS_UP"),
           feedback_db.rate(g(task="sentiment", model_output=nan), "THUMBS_UP")]
    bad_edit = feedback_db.rate(g(model_output=POST), "EDITED", edited_output=surrogate)
    good = feedback_db.rate(g(model_output=POST, user_input="fine"), "THUMBS_UP")
    result = export(feedback_db, tmp_path)
    assert result.skipped.ids == {mapping.INVALID_ANSWER: bad, mapping.INVALID_EDIT: [bad_edit]}
    assert "surrogate" in result.skipped.detail[mapping.INVALID_ANSWER]
    assert [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [good]
    assert "NaN" not in (tmp_path / SFT_FILE).read_text()


def test_edits_that_only_reorder_keys_make_no_pair(feedback_db, tmp_path):
    original = json.loads(POST)
    reordered = json.dumps(dict(reversed(list(original.items()))))
    edit = feedback_db.rate(feedback_db.generation(model_output=POST), "EDITED", edited_output=reordered)
    prompt = "Post about our cake"
    feedback_db.rate(feedback_db.generation(user_input=prompt, model_output=POST), "THUMBS_UP")
    down = feedback_db.rate(feedback_db.generation(user_input=prompt, model_output=reordered), "THUMBS_DOWN")
    result = export(feedback_db, tmp_path)
    assert read(tmp_path, DPO_FILE) == []
    assert result.no_pair.ids == {mapping.UNCHANGED_EDIT: [edit], mapping.SAME_ANSWER: [down]}


def assert_same_as_full(db, out: Path):
    """The incremental files hold exactly the lines a full export writes (in any order)."""
    full = out.parent / f"{out.name}-full"
    export(db, full, full=True)
    for name in (SFT_FILE, DPO_FILE):
        assert sorted((out / name).read_text().splitlines()) == sorted((full / name).read_text().splitlines()), name


def pairs(out: Path) -> list[tuple]:
    return sorted((p["rejected_feedback_id"], p["chosen_feedback_id"]) for p in read(out, DPO_FILE) if p["pair"] == "thumbs_down")


def test_incremental_pairs_follow_the_newest_approved_answer_like_a_full_export(feedback_db, tmp_path):
    out = tmp_path / "incremental"
    answer = lambda post: json.dumps({**json.loads(POST), "post": post})  # noqa: E731
    made = lambda text: feedback_db.generation(user_input="Post about our cake", model_output=answer(text))  # noqa: E731
    down = feedback_db.rate(made("meh"), "THUMBS_DOWN")
    first_up = feedback_db.rate(made("Cake!"), "THUMBS_UP")
    export(feedback_db, out)
    assert pairs(out) == [(down, first_up)]

    newer = made("Our cake, fresh today.")
    newer_up = feedback_db.rate(newer, "THUMBS_UP")
    export(feedback_db, out)
    assert pairs(out) == [(down, newer_up)]  # one pair, with the newest approved answer
    assert_same_as_full(feedback_db, out)

    newer_down = feedback_db.rate(newer, "THUMBS_DOWN")  # the newest approved answer is disliked after all
    export(feedback_db, out)
    assert pairs(out) == [(down, first_up), (newer_down, first_up)]
    assert_same_as_full(feedback_db, out)

    feedback_db.rate(made("hm"), "EDITED", edited_output=answer("Cake, baked at dawn."))
    export(feedback_db, out)
    assert_same_as_full(feedback_db, out)


def test_a_rating_dated_in_the_future_does_not_stop_later_exports(feedback_db, tmp_path, caplog):
    future = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="a"), "THUMBS_UP",
                              created_at="2099-01-01T00:00:00Z")
    now = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="b"), "THUMBS_UP")
    with caplog.at_level("WARNING"):
        first = export(feedback_db, tmp_path)
    assert first.sft == 1 and [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [now]
    assert f"1 ratings are dated in the future (e.g. id {future}" in caplog.text
    assert json.loads((tmp_path / ".export_state.json").read_text())["mark"]["id"] == now
    later = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="c"), "THUMBS_UP")
    second = export(feedback_db, tmp_path)
    assert second.sft == 1 and [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [now, later]
    assert_same_as_full(feedback_db, tmp_path)


def test_a_rating_committed_after_an_export_began_is_exported_next_time(feedback_db, tmp_path):
    import psycopg2

    late_gen = feedback_db.generation(model_output=POST, user_input="late")
    slow = psycopg2.connect(feedback_db.url)  # the app's transaction: created_at = now() = its start
    try:
        with slow.cursor() as cur:
            cur.execute("INSERT INTO feedback (generation_id, rating) VALUES (%s, 'THUMBS_UP') RETURNING id", (late_gen,))
            late = cur.fetchone()[0]
        early = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="early"), "THUMBS_UP")
        first = export(feedback_db, tmp_path)  # sees `early` (newer) but not `late` (not yet committed)
        slow.commit()
    finally:
        slow.close()
    assert first.sft == 1
    second = export(feedback_db, tmp_path)
    assert second.sft == 1 and [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [early, late]
    third = export(feedback_db, tmp_path)  # read once only: the overlap is de-duplicated by rating id
    assert (third.in_window, third.sft, len(read(tmp_path, SFT_FILE))) == (0, 0, 2)
    assert_same_as_full(feedback_db, tmp_path)


@pytest.mark.parametrize("cascade", [True, False], ids=["ratings deleted too", "generation only"])
def test_a_deleted_generation_loses_its_lines_on_the_next_export(feedback_db, tmp_path, caplog, cascade):
    if not cascade:  # an app without the foreign key: its ratings stay behind
        feedback_db.execute("ALTER TABLE feedback DROP CONSTRAINT feedback_generation_id_fkey")
    prompt = "Post about our cake"
    erased = feedback_db.generation(user_input=prompt, model_output=BETTER_POST)
    older = feedback_db.generation(user_input=prompt, model_output=POST)
    bad = feedback_db.generation(user_input=prompt, model_output='{"post": "meh"}')
    edited = feedback_db.generation(user_input="Another post", model_output=POST)
    older_up = feedback_db.rate(older, "THUMBS_UP")
    erased_up = feedback_db.rate(erased, "THUMBS_UP")
    down = feedback_db.rate(bad, "THUMBS_DOWN")
    feedback_db.rate(edited, "EDITED", edited_output=BETTER_POST, comment="ask for Anna Schmidt")
    export(feedback_db, tmp_path)
    assert pairs(tmp_path) == [(down, erased_up)]

    feedback_db.execute("DELETE FROM generations WHERE id IN (%s, %s)", (erased, edited))
    with caplog.at_level("WARNING"):
        result = export(feedback_db, tmp_path)
    assert result.full and "2 ratings that earlier exports covered were deleted" in caplog.text
    lines = (tmp_path / SFT_FILE).read_text() + (tmp_path / DPO_FILE).read_text()
    assert [e["generation_id"] for e in read(tmp_path, SFT_FILE)] == [older]
    assert "Anna Schmidt" not in lines and f'"generation_id":{erased},' not in lines and f'"generation_id":{edited},' not in lines
    assert pairs(tmp_path) == [(down, older_up)]  # paired anew with the answer that is left
    assert_same_as_full(feedback_db, tmp_path)
    assert not export(feedback_db, tmp_path).full  # back to incremental runs


def test_a_state_of_the_older_format_makes_one_full_export(feedback_db, tmp_path):
    first = feedback_db.rate(feedback_db.generation(model_output=POST, user_input="a"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    state_file = tmp_path / ".export_state.json"
    state = json.loads(state_file.read_text())
    state.pop("seen"), state.pop("covered")
    state_file.write_text(json.dumps({**state, "version": 1}))  # written before the overlap window existed
    result = export(feedback_db, tmp_path)
    assert result.full and [e["feedback_id"] for e in read(tmp_path, SFT_FILE)] == [first]
    assert json.loads(state_file.read_text())["version"] == 2


def test_a_hostile_number_does_not_stall_the_export(feedback_db, tmp_path):
    order = "Bestellung #0" + "0" * 40 + "47X"  # took minutes (and grew 4x per 2 digits) with the old pattern
    answer = json.dumps({"post": "Ref " + "7" * 10_000 + " " + order, "hashtags": ["#bakery"], "call_to_action": "Go"})
    feedback_db.rate(feedback_db.generation(user_input=order, model_output=answer), "THUMBS_UP")
    started = time.process_time()
    result = export(feedback_db, tmp_path)
    assert result.sft == 1 and time.process_time() - started < 5
    [example] = read(tmp_path, SFT_FILE)
    assert example["messages"][1]["content"] == order  # an order number is not a phone number


def test_a_deleted_rating_brings_back_the_one_before_it(feedback_db, tmp_path):
    flip = feedback_db.generation(model_output=POST, user_input="liked, then disliked")
    liked = feedback_db.rate(flip, "THUMBS_UP", created_at="2025-03-01T10:00:00Z")
    disliked = feedback_db.rate(flip, "THUMBS_DOWN", created_at="2025-03-02T10:00:00Z")
    feedback_db.rate(feedback_db.generation(model_output=POST, user_input="other"), "THUMBS_UP")
    export(feedback_db, tmp_path)
    assert flip not in [e["generation_id"] for e in read(tmp_path, SFT_FILE)]  # its latest rating: thumbs down
    feedback_db.execute("DELETE FROM feedback WHERE id = %s", (disliked,))  # the user took it back
    export(feedback_db, tmp_path)
    assert liked in [e["feedback_id"] for e in read(tmp_path, SFT_FILE)]
    assert_same_as_full(feedback_db, tmp_path)
