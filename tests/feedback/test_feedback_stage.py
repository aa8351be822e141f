"""``python run.py stage=feedback`` end to end, as a user runs it: secrets, errors, the issue's flow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_smm
from fixtures_postgres import TEST_ROLE, _free_port

SEED = REPO / "data" / "seed" / "social_media_examples.jsonl"
RATINGS = ("THUMBS_UP", "EDITED", "THUMBS_UP", "THUMBS_DOWN", "THUMBS_UP")


def seed_from_examples(db) -> dict[str, int]:
    """Generations from the seed examples with a mix of ratings: thumbs up, edits, thumbs down
    next to an approved answer of the same prompt, and one rating too many for a generation."""
    counts = {"sft": 0, "dpo": 0}
    for i, line in enumerate(SEED.read_text(encoding="utf-8").splitlines()):
        example = json.loads(line)
        system, user, assistant = (m["content"] for m in example["messages"])
        fields = dict(task=example["task"], language=example["language"], platform=example["platform"],
                      system_prompt=system, user_input=user)
        rating = RATINGS[i % len(RATINGS)]
        if rating == "THUMBS_DOWN":
            bad = db.generation(**fields, model_output='{"post": "Buy now!!!"}')
            db.rate(bad, "THUMBS_DOWN", comment="Too pushy; call me at +49 30 1234567")
            rating = "THUMBS_UP"
            counts["dpo"] += 1
        gid = db.generation(**fields, model_output=assistant if rating == "THUMBS_UP" else '{"draft": true}')
        db.rate(gid, rating, edited_output=assistant if rating == "EDITED" else None)
        counts["sft"] += 1
        counts["dpo"] += rating == "EDITED"
    return counts


def feedback_args(out: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["stage=feedback", f"feedback.output_dir={out}", f"feedback.state_file={out}/.export_state.json",
            f"hydra.run.dir={run_dir}", *extra]


def env_with(url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, "DATABASE_URL": url} if url else env


def run_feedback(tmp_path: Path, out: Path, name: str, *extra: str, url: str | None = None):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *feedback_args(out, tmp_path / name, *extra)],
               cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env_with(url))


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_done_when_flow_export_twice_then_prepare_and_no_secret_anywhere(feedback_db, postgres_server, tmp_path):
    expected = seed_from_examples(feedback_db)
    out = tmp_path / "feedback"
    first = run_feedback(tmp_path, out, "run1", url=feedback_db.url)
    assert first.returncode == 0, first.stderr
    sft = (out / "feedback_sft.jsonl").read_text(encoding="utf-8").splitlines()
    dpo = (out / "feedback_dpo.jsonl").read_text(encoding="utf-8").splitlines()
    assert (len(sft), len(dpo)) == (expected["sft"], expected["dpo"])
    assert "THUMBS_UP" in first.stdout and "post_generation" in first.stdout  # the count tables
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["new_sft"] == expected["sft"] and "database_url" not in manifest["config"]["feedback"]

    # the URL given on the command line instead of the environment: the same secrecy
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    second = run_feedback(tmp_path, out, "run2", f"feedback.database_url={feedback_db.url}")
    assert second.returncode == 0, second.stderr
    assert "No new feedback" in second.stdout
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before
    assert json.loads((out / "manifest.json").read_text())["metrics"]["new_sft"] == 0

    prepared = run_smm("stage=prepare", f"data.sources=[{out}]", f"data.output_dir={tmp_path / 'processed'}",
                       "data.strict=true", f"hydra.run.dir={tmp_path / 'run3'}", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    stats = json.loads((tmp_path / "processed" / "stats.json").read_text())
    assert stats["files"] == [str(out / "feedback_sft.jsonl")]  # the DPO file is left to preference training
    assert stats["rejected"]["total"] == 0
    assert stats["train"]["examples"] + stats["val"]["examples"] == expected["sft"]

    password = postgres_server.password
    texts = [first.stdout, first.stderr, second.stdout, second.stderr]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in files_under(tmp_path / "run1", tmp_path / "run2", out)]
    assert (tmp_path / "run1" / ".hydra" / "config.yaml").exists() and (tmp_path / "run2" / ".hydra" / "overrides.yaml").exists()
    assert not [t for t in texts if password in t]
    assert "***@127.0.0.1" in first.stdout + first.stderr  # the masked URL is what the log shows


@pytest.fixture(scope="module")
def fault_setup(postgres_server, tmp_path_factory):
    """A database with one rating and an output folder with its good export, shared by the fault tests."""
    db = postgres_server.create_database()
    db.rate(db.generation(model_output=json.dumps(
        {"post": "Fresh bread.", "hashtags": ["#bread"], "call_to_action": "Come by!"})), "THUMBS_UP")
    root = tmp_path_factory.mktemp("exported")
    assert run_feedback(root, root / "feedback", "ok", url=db.url).returncode == 0
    yield db, root / "feedback"
    db.close()
    postgres_server.drop_database(db.name)


def _fault(kind: str, db, server) -> tuple[str | None, list[str], str]:
    """(URL, extra overrides, expected message part) for each way the database can fail."""
    wrong = f"postgresql://{TEST_ROLE}:{server.password}-wrong@127.0.0.1:{server.port}/{db.name}"
    return {
        "unreachable": (f"postgresql://{TEST_ROLE}:{server.password}@127.0.0.1:{_free_port()}/{db.name}", [],
                        "cannot connect to postgresql://smm_feedback:***@127.0.0.1:"),
        "wrong password": (wrong, [], 'password authentication failed for user "smm_feedback"'),
        "missing table": (db.url, ["feedback.tables.feedback=ratings"], 'table "ratings" not found (set feedback.tables.feedback'),
        "missing column": (db.url, ["feedback.columns.rating=stars"], 'table "feedback" has no column "stars" (set feedback.columns.rating'),
        "bad url": (f"postgresql://{TEST_ROLE}:{server.password}@127.0.0.1:notaport/{db.name}", [], "***@127.0.0.1:notaport"),
        "no url": (None, [], "no database: set DATABASE_URL="),
    }[kind]


@pytest.mark.parametrize("kind", ["unreachable", "wrong password", "missing table", "missing column", "bad url", "no url"])
def test_database_faults_end_in_one_masked_line_and_keep_outputs(kind, fault_setup, postgres_server, tmp_path):
    db, good = fault_setup
    exported = tmp_path / "feedback"
    shutil.copytree(good, exported)
    url, extra, expected = _fault(kind, db, postgres_server)
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    result = run_feedback(tmp_path, exported, "fail", *extra, url=url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    texts = [result.stdout, result.stderr] + [p.read_text(errors="replace") for p in files_under(tmp_path / "fail")]
    assert not [t for t in texts if postgres_server.password in t]
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before


def test_the_overlap_window_is_a_config_key_with_a_bound():
    from conftest import compose_config

    from smm.config import validate
    from smm.errors import ConfigError

    assert compose_config("stage=feedback").feedback.overlap_minutes == 15
    assert compose_config("stage=feedback", "feedback.overlap_minutes=60").feedback.overlap_minutes == 60
    with pytest.raises(ConfigError, match="feedback.overlap_minutes"):
        validate(compose_config("stage=feedback", "feedback.overlap_minutes=-1"))
