"""Train-stage fixtures: the prepared seed data, a small subset of it, and one run per session of the
README's demo pipeline on the tiny model (``preset=tiny`` with ``preset=demo``'s pipeline: prepare →
train → export with the base model's GGUF → evaluate beside it → chat).

Every run writes only under pytest's tmp folders: data, adapter, checkpoints and Hydra's run dir.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, run_smm

# A database URL given on the command line and in the environment of the demo run: it must reach
# no file the run writes.
SECRET = "s3cretpw"
SECRET_URL = f"postgresql://u:{SECRET}@h/db"

# Small runs: the demo's model and optimizer on 4 short conversations (306-348 tokens), one per row.
SMALL = ("preset=tiny", "model.max_seq_length=400")


@dataclass
class TrainRun:
    root: Path
    result: subprocess.CompletedProcess

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> str:
        return self.result.stdout + self.result.stderr

    def metrics(self) -> dict:
        return json.loads((self.adapter / "metrics.json").read_text(encoding="utf-8"))

    def manifest(self) -> dict:
        return json.loads((self.adapter / "manifest.json").read_text(encoding="utf-8"))

    def returned_loss(self) -> float:
        """The float the stage returned, from its last log line (printed with full precision)."""
        found = re.findall(r"eval loss ([-+0-9.e]+|nan|None)", self.log)
        assert found, self.log[-3000:]
        return float(found[-1])

    def check(self) -> "TrainRun":
        assert self.result.returncode == 0, self.log[-5000:]
        return self


def train_args(root: Path, data_dir: Path, *overrides: str, hydra: bool = True) -> list[str]:
    """``stage=train`` overrides that keep every output of a run under ``root`` (``hydra``: its run dir too)."""
    return [
        "stage=train", f"data.output_dir={data_dir}", f"training.output_dir={root / 'adapter'}",
        f"training.checkpoint_dir={root / 'checkpoints'}", *([f"hydra.run.dir={root / 'run'}"] if hydra else []), *overrides,
    ]


def run_train(root: Path, data_dir: Path, *overrides: str, env: dict | None = None) -> TrainRun:
    root.mkdir(parents=True, exist_ok=True)
    return TrainRun(root, run_smm(*train_args(root, data_dir, *overrides), cwd=root, env=env))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def prepared_seed(tmp_path_factory) -> Path:
    """``python run.py stage=prepare`` on the 30 seed examples: train.jsonl (27) and val.jsonl (3)."""
    root = tmp_path_factory.mktemp("prepared")
    result = run_smm("stage=prepare", f"data.output_dir={root / 'data'}", f"hydra.run.dir={root / 'run'}", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "data"


@pytest.fixture(scope="session")
def small_data(prepared_seed, tmp_path_factory) -> Path:
    """The 4 shortest training conversations and the shortest validation one."""
    data = tmp_path_factory.mktemp("small") / "data"
    by_length = lambda rows: sorted(rows, key=lambda r: len(json.dumps(r, ensure_ascii=False)))
    write_rows(data / "train.jsonl", by_length(read_rows(prepared_seed / "train.jsonl"))[:4])
    write_rows(data / "val.jsonl", by_length(read_rows(prepared_seed / "val.jsonl"))[:1])
    return data


def demo_shape() -> tuple[str, ...]:
    """``preset=demo``'s pipeline as overrides (stages, the base model's GGUF, the baseline, the repeat
    penalty, the chat message), for running it with the tiny model."""
    from conftest import compose_config

    demo = compose_config("preset=demo")
    return (f"pipeline.stages=[{','.join(demo.pipeline.stages)}]", f"export.base_gguf={demo.export.base_gguf}",
            "eval.baseline=${export.output_dir}/${export.model_name}-base-${export.quantization}.gguf",
            f"eval.repeat_penalty={demo.eval.repeat_penalty}", f"chat.task={demo.chat.task}", f"chat.language={demo.chat.language}", f"chat.platform={demo.chat.platform}",
            f"chat.prompt='{demo.chat.prompt}'")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> TrainRun:
    """The README's demo pipeline (``python run.py stage=pipeline preset=demo``) on the tiny model
    (``preset=tiny``: prepare → train → export with the base GGUF → evaluate beside it → chat), once
    per session with every output under one tmp folder, and with a database URL on the command line
    and in the environment that must not leak."""
    root = tmp_path_factory.mktemp("demo")
    outputs = (
        f"data.sources=[{REPO / 'data' / 'seed'}]", f"data.output_dir={root / 'data'}", f"training.output_dir={root / 'adapter'}",
        f"training.checkpoint_dir={root / 'checkpoints'}", f"export.merged_dir={root / 'merged'}",
        f"export.output_dir={root / 'gguf'}", f"eval.output_dir={root / 'eval'}", f"hydra.run.dir={root / 'run'}",
    )
    result = run_smm("stage=pipeline", "preset=tiny", *demo_shape(), *outputs, f"feedback.database_url={SECRET_URL}",
                     cwd=root, env={"DATABASE_URL": SECRET_URL})
    return TrainRun(root, result).check()
