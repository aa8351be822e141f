"""``python run.py stage=export`` end to end on the tiny model, re-runs, failures and registration."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import compose_config, run_smm
from fixtures_gguf import make_fake_ollama
from smm.chat import render_modelfile
from smm.errors import SmmError
from smm.io import sha256_file
from smm.export.ollama import register
from smm.tasks import TASKS

GGUF = "social-media-marketer-q4_k_m.gguf"


def _log(result) -> str:
    return result.stdout + result.stderr


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_writes_gguf_modelfile_and_manifest(tiny_export):
    log = _log(tiny_export.result)
    for number, name in enumerate(("check", "merge", "convert", "quantize", "verify", "publish"), start=1):
        assert f"[{number}/8] {name}: done in" in log
    assert "[7/8] base: skipped (export.base_gguf=false)" in log and "[8/8] register: done in" in log
    assert sorted(p.name for p in tiny_export.output_dir.iterdir()) == sorted([GGUF, "Modelfile", "manifest.json", "schemas"])
    schemas = tiny_export.output_dir / "schemas"
    assert {p.name: json.loads(p.read_text(encoding="utf-8")) for p in schemas.iterdir()} == {
        f"{name}.json": task.schema for name, task in TASKS.items()}  # exactly the registry's
    assert tiny_export.manifest["schemas"] == [str(schemas / f"{name}.json") for name in TASKS]
    assert tiny_export.modelfile.read_text(encoding="utf-8") == render_modelfile(f"./{GGUF}", model_name="social-media-marketer")

    manifest = tiny_export.manifest
    gguf = manifest["gguf"]
    assert gguf["file"] == GGUF and gguf["quantization"] == "q4_k_m"
    assert gguf["size_bytes"] == tiny_export.gguf.stat().st_size
    assert gguf["sha256"] == sha256_file(tiny_export.gguf)
    assert gguf["tensor_count"] == 27 and gguf["tensor_types"]["Q4_K"] >= 10
    smoke = manifest["smoke_test"]
    assert smoke["passed"] and smoke["ends_on_im_end"] and 1 <= smoke["completion_tokens"] <= 16
    assert smoke["stopped_on"] in ("eos", "token_limit")
    assert manifest["merged"]["reused"] is False and manifest["merged"]["base_source"] == "model.recipe=tiny_qwen2"
    assert set(manifest["steps"]) == {"check", "merge", "convert", "quantize", "verify", "publish", "base", "register"}
    assert manifest["steps"]["base"] == {"skipped": "export.base_gguf=false"} and "base_gguf" not in manifest
    assert all(step["seconds"] >= 0 and step["peak_rss_gb"] > 0 for name, step in manifest["steps"].items() if name != "base")
    assert manifest["config"]["export"]["quantization"] == "q4_k_m"
    assert set(manifest["inputs"]) == {str(tiny_export.adapter_dir / n) for n in ("adapter_config.json", "adapter_model.safetensors")}


def test_the_stage_steps_run_one_by_one_as_the_stage_runs_them(tiny_export, tiny_model_dir, tmp_path):
    """bench/export_7b.py runs the stage's own steps; each gives what the stage recorded."""
    from smm.stages import export

    found = export.check_inputs(tiny_export.adapter_dir, compose_config("model=tiny_qwen2").model)
    manifest = tiny_export.manifest
    assert (found.base_dir, found.base_source) == (tiny_model_dir, manifest["merged"]["base_source"])
    assert found.parameters == manifest["steps"]["check"]["parameters"]
    assert json.loads((tiny_export.merged_dir / "merge.json").read_text())["inputs"] == found.fingerprint
    info, smoke = export.verify(tiny_export.gguf, tiny_export.merged_dir, smoke_test=False)
    assert smoke == {"skipped": "export.smoke_test=false"}
    assert export.gguf_record(tiny_export.gguf, GGUF, "q4_k_m", info) == manifest["gguf"]
    modelfile = export.write_modelfile(tmp_path, GGUF, "social-media-marketer")
    assert modelfile.read_text(encoding="utf-8") == tiny_export.modelfile.read_text(encoding="utf-8")


def test_export_registers_with_ollama(tiny_export):
    (call,) = tiny_export.ollama.calls()
    assert call["args"] == ["create", "social-media-marketer", "-f", str(tiny_export.modelfile.resolve())]
    assert call["from_is_gguf"] and call["from_path"] == str(tiny_export.gguf.resolve())
    assert call["modelfile"] == tiny_export.modelfile.read_text(encoding="utf-8")
    assert tiny_export.manifest["register"] == {"registered": True, "command": "ollama " + " ".join(call["args"])}


def test_exported_gguf_runs_in_llama_cpp(tiny_export):
    from llama_cpp import Llama

    llm = Llama(str(tiny_export.gguf), n_ctx=512, verbose=False)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "Ein Post für unsere Bäckerei, bitte."}], max_tokens=8, temperature=0.0)
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] <= 8
    assert llm.chat_format == "chat_template.default"  # llama-cpp-python uses the GGUF's own template


def test_rerun_reuses_the_merged_model(tiny_export):
    weights = tiny_export.merged_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    out_dir = tiny_export.workdir / "gguf_f16"
    stale = out_dir / ".social-media-marketer-f16.gguf.x1y2.partial"  # left by a killed export
    stale.mkdir(parents=True)
    (stale / "f16.gguf").write_bytes(b"half a model")
    result = run_smm(*tiny_export.overrides(**{"export.output_dir": str(out_dir), "export.quantization": "f16",
                                                 "export.smoke_test": "false"}), cwd=tiny_export.workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    log = _log(result)
    assert "merge: skipped" in log and "up to date" in log and "quantize: skipped" in log
    assert weights.stat().st_mtime_ns == before
    assert not stale.exists() and "left by an interrupted export" in log
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["merged"]["reused"] is True and manifest["smoke_test"] == {"skipped": "export.smoke_test=false"}
    assert manifest["gguf"]["tensor_types"] == {"F16": 16, "F32": 11}
    assert (out_dir / "Modelfile").read_text().count("FROM ./social-media-marketer-f16.gguf") == 1


def test_converter_failure_keeps_the_previous_export(tiny_export, tmp_path):
    merged, output = tmp_path / "merged", tmp_path / "gguf"
    shutil.copytree(tiny_export.merged_dir, merged)
    shutil.copytree(tiny_export.output_dir, output)
    before = _snapshot(output)
    with open(merged / "model.safetensors", "r+b") as fh:  # same size, broken header: still "current"
        fh.seek(8)
        fh.write(b"#garbage")
    overrides = tiny_export.overrides(**{"export.merged_dir": str(merged), "export.output_dir": str(output)})

    result = run_smm(*overrides, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: converting {merged} to GGUF failed") and result.stderr.count("\n") == 1
    assert _snapshot(output) == before  # previous GGUF, Modelfile and manifest untouched, no partial files

    forced = run_smm(*overrides, "export.force=true", "export.quantization=f16", "export.smoke_test=false", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "[2/8] merge: done in" in _log(forced)
    assert sorted(p.name for p in output.iterdir()) == sorted([GGUF, "Modelfile", "manifest.json", "schemas", "social-media-marketer-f16.gguf"])


def test_missing_adapter_is_one_line(tmp_path):
    result = run_smm("stage=export", "export.adapter_dir=nope", cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "error: adapter folder nope does not exist: train one first (python run.py stage=train) or set export.adapter_dir\n"
    assert not (tmp_path / "output" / "gguf").exists() and not (tmp_path / "output" / "merged").exists()


def _cfg(tmp_path: Path, adapter: Path, *extra: str):
    return compose_config("stage=export", "model=tiny_qwen2", f"export.adapter_dir={adapter}",
                          f"export.merged_dir={tmp_path / 'merged'}", f"export.output_dir={tmp_path / 'gguf'}", *extra)


def test_adapter_for_another_base_stops_before_writing(tiny_adapter, tmp_path):
    from transformers import Qwen2Config

    from smm.stages import export
    from smm.models.tiny import MODEL_SHAPE

    other = tmp_path / "other-base"
    Qwen2Config(**{**MODEL_SHAPE, "num_hidden_layers": 1}).save_pretrained(other)
    (other / "model.safetensors").write_bytes(b"")  # present; the shape check reads only the config
    cfg = _cfg(tmp_path, tiny_adapter, "model.recipe=null", f"model.base_model={other}")
    with pytest.raises(SmmError, match=r"model\.layers\.1\.\S+ does not exist in base model .*other-base: the adapter .* different base"):
        export.run(cfg)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "gguf").exists()


def test_not_enough_disk_stops_before_writing(tiny_adapter, tmp_path, monkeypatch):
    from smm.stages import export

    monkeypatch.setattr("smm.export.diskspace.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 100 * 10**6))
    with pytest.raises(SmmError, match=r"not enough free disk space on .*need about 0\.\d GB \(f16 GGUF 0\.2 GB, q4_k_m GGUF 0\.0 GB, merged model 0\.2 GB\), 0\.1 GB free"):
        export.run(_cfg(tmp_path, tiny_adapter))
    assert not (tmp_path / "merged").exists() and not (tmp_path / "gguf").exists()


def test_register_without_ollama_prints_the_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./x.gguf\n")
    with caplog.at_level("WARNING"):
        assert register("social-media-marketer", modelfile) == {"registered": False, "command": f"ollama create social-media-marketer -f {modelfile}"}
    assert f"ollama create social-media-marketer -f {modelfile}" in caplog.text


def test_register_failure_is_one_clear_line(tmp_path, monkeypatch):
    ollama = make_fake_ollama(tmp_path / "bin")
    for key, value in {**ollama.env, "FAKE_OLLAMA_FAIL": "1"}.items():
        monkeypatch.setenv(key, value)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./x.gguf\n")
    with pytest.raises(SmmError, match=r"^ollama create failed: Error: could not connect to ollama app, is it running\?; .*start Ollama \(ollama serve\) and run: ollama create m -f "):
        register("m", modelfile)
    assert ollama.calls()[0]["args"] == ["create", "m", "-f", str(modelfile)]


@pytest.mark.parametrize("extra, expected", [
    (("model.base_model=null",), "/nonexistent/base-from-adapter"),
    ((), "Qwen/Qwen2.5-7B-Instruct"),
])
def test_base_comes_from_the_model_option_and_null_means_the_adapters(tiny_adapter, tmp_path, extra, expected):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nonexistent/base-from-adapter"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run_smm("stage=export", f"export.adapter_dir={adapter}", *extra, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: base model '{expected}' not found: not a local folder and not in the Hugging Face cache")


@pytest.mark.parametrize("name", ["model\n", "model\nFROM evil", "-model", "mo del", ""])
def test_model_names_are_matched_whole(name):
    from smm.stages.export import gguf_filename

    with pytest.raises(SmmError, match="export.model_name"):
        gguf_filename(name, "q4_k_m")
    assert gguf_filename("social-media_marketer.v2", "q4_k_m") == "social-media_marketer.v2-q4_k_m.gguf"
