"""Reading a task folder (``conf/tasks``): one ``<task>.yaml`` per task and ``_registry.yaml``.

Every problem is a :class:`~smm.errors.ConfigError` of one line that names the file and the key:
a schema that is not valid JSON Schema, a field path that is not in the schema, a platform without
a character limit, an unknown check name, an example that breaks the schema. docs/tasks.md
describes every key.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from smm.errors import ConfigError

REGISTRY_FILE = "_registry.yaml"
FACT_SOURCES = ("", "prompt", "quoted")
FREE_NUMBERS = ("", "clock", "score")
PATH_KEYS = ("text_fields", "published_fields", "hashtag_fields", "addressed_fields")
TASK_KEYS = ("title", "system_prompt", "schema", "schema_file", *PATH_KEYS, "hashtags_published",
             "fact_source", "free_numbers", "checks", "example", "eval_cases")
REQUIRED_KEYS = ("title", "system_prompt", "checks", "example")


def _fail(where: Path | str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def read_yaml(path: Path) -> dict:
    """A YAML file that must hold a mapping."""
    import yaml

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise _fail(path, "", f"not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, "", f"cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(path, "", "must be a mapping of keys (docs/tasks.md)")
    return data


def read_registry_file(folder: Path) -> tuple[dict[str, int], list[str]]:
    """``(platform limits, task order)`` from ``_registry.yaml``."""
    path = folder / REGISTRY_FILE
    if not path.is_file():
        raise _fail(path, "", "not found (every task folder has one: the platforms and their character limits)")
    data = read_yaml(path)
    for key in data:
        if key not in ("platforms", "order"):
            raise _fail(path, str(key), "unknown key (keys: platforms, order)")
    platforms = data.get("platforms")
    if not isinstance(platforms, dict) or not platforms:
        raise _fail(path, "platforms", "must map each platform to its character limit, e.g. {x: 280}")
    for name, limit in platforms.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise _fail(path, f"platforms.{name}", f"no character limit ({limit!r}); give a whole number > 0")
    order = data.get("order") or []
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise _fail(path, "order", "must be a list of task names")
    return {str(k): v for k, v in platforms.items()}, order


def schema_at(schema: Any, path: str) -> Any:
    """The sub-schema at a field path (``post``, ``variations[].post``, ``changes[]``), or None."""
    for part in path.split("."):
        many = part.endswith("[]")
        name = part.removesuffix("[]")
        if not isinstance(schema, dict) or name not in schema.get("properties", {}):
            return None
        schema = schema["properties"][name]
        if many:
            if not isinstance(schema, dict) or schema.get("type") != "array":
                return None
            schema = schema.get("items")
    return schema


def _read_schema(path: Path, data: dict) -> dict:
    from jsonschema import Draft202012Validator, SchemaError

    if ("schema" in data) == ("schema_file" in data):
        raise _fail(path, "schema", "give the answer's JSON schema inline (schema) or as a file beside it (schema_file)")
    key = "schema"
    schema = data.get("schema")
    if "schema_file" in data:
        key, file = "schema_file", path.parent / str(data["schema_file"])
        try:
            schema = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(path, key, f"{file}: not a readable JSON file ({exc})") from None
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _fail(path, key, f"not a valid JSON Schema: {exc.json_path.removeprefix('$.')}: {exc.message}"[:300]) from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise _fail(path, key, "the answer must be an object: type: object with properties")
    if schema.get("additionalProperties") is not False:
        raise _fail(path, key, "additionalProperties: false is needed (an answer holds the task's keys and no others)")
    return schema


def _paths(path: Path, data: dict, key: str, schema: dict) -> tuple[str, ...]:
    paths = data.get(key) or []
    if not isinstance(paths, list):
        raise _fail(path, key, "must be a list of field paths, e.g. [post, variations[].post]")
    for field in paths:
        found = schema_at(schema, str(field))
        if found is None:
            raise _fail(path, key, f"{field!r} is not in the schema")
        want = "array" if key == "hashtag_fields" else "string"
        if not isinstance(found, dict) or found.get("type") != want:
            raise _fail(path, key, f"{field!r} must be a {want} in the schema")
    return tuple(str(f) for f in paths)


def _choice(path: Path, data: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key) or ""
    if value not in allowed:
        raise _fail(path, key, f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")
    return value


def read_task(path: Path):
    """The Task described by ``path`` (``<name>.yaml``)."""
    from jsonschema import Draft202012Validator

    from smm.eval.checks import CHECKS
    from smm.tasks import Task

    data = read_yaml(path)
    for key in data:
        if key not in TASK_KEYS:
            raise _fail(path, str(key), f"unknown key (keys: {', '.join(TASK_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise _fail(path, key, "missing")
    for key in ("title", "system_prompt"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(path, key, "must be a non-empty string")
    if not isinstance(data.get("hashtags_published", False), bool):
        raise _fail(path, "hashtags_published", "must be true or false")
    schema = _read_schema(path, data)
    fields = {key: _paths(path, data, key, schema) for key in PATH_KEYS}
    checks = data["checks"]
    if not isinstance(checks, list) or not checks:
        raise _fail(path, "checks", f"must list the checks that apply (of: {', '.join(CHECKS)})")
    for name in checks:
        if name not in CHECKS:
            raise _fail(path, "checks", f"{name!r} is not a check (checks: {', '.join(CHECKS)})")
    cases = data.get("eval_cases") or []
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise _fail(path, "eval_cases", "must be a list of evaluation cases (mappings)")
    task = Task(
        name=path.stem, title=data["title"].strip(), system_prompt=data["system_prompt"].strip(), schema=schema,
        hashtags_published=data.get("hashtags_published", False),
        fact_source=_choice(path, data, "fact_source", FACT_SOURCES),
        free_numbers=_choice(path, data, "free_numbers", FREE_NUMBERS),
        checks=tuple(checks), example=data["example"], eval_cases=tuple(cases), source=str(path), **fields,
    )
    for name in checks:
        if not CHECKS[name].fits(task):
            raise _fail(path, "checks", f"{name!r} cannot apply to this task ({CHECKS[name].needs})")
    error = next(Draft202012Validator(schema).iter_errors(task.example), None)
    if error is not None:
        raise _fail(path, "example", f"breaks the schema: {error.json_path.removeprefix('$.')}: {error.message}"[:300])
    return task


def read_folder(folder: Path) -> tuple[dict, dict[str, int]]:
    """``(tasks by name, platform limits)`` of a task folder, tasks in the registry's order."""
    if not folder.is_dir():
        raise ConfigError(f"tasks_dir: {folder} is not a folder (it holds one <task>.yaml per task)")
    platforms, order = read_registry_file(folder)
    files = {p.stem: p for p in sorted(folder.glob("*.yaml")) if not p.name.startswith("_")}
    for name, path in files.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
            raise _fail(path, "", "a task file's name is the task's: lowercase letters, digits and _ (e.g. carousel_caption.yaml)")
    if not files:
        raise ConfigError(f"tasks_dir: {folder} holds no task file (<task>.yaml)")
    for name in order:
        if name not in files:
            raise _fail(folder / REGISTRY_FILE, "order", f"{name!r} has no task file {name}.yaml")
    names = list(dict.fromkeys([*order, *files]))
    return {name: read_task(files[name]) for name in names}, platforms
