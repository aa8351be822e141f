"""The task registry: the tasks smm trains and evaluates, read from a task folder (``conf/tasks``).

For every task it holds the JSON schema of the answer, the system prompt, which answer fields
carry prose in the requested language, which fields are published on the platform (and so are
bound by its character limit), which hold hashtags and which checks apply. Prepare validates with
it, train formats prompts with it, feedback filters with it, evaluate derives every check from it,
export writes its schemas; nothing else hard-codes task keys. docs/tasks.md: adding a task.

One registry is current per process: the folder the config names (``tasks_dir``), loaded and made
current by :func:`use` when the config is validated (smm/config.py), before any stage runs; until
then the repository's ``conf/tasks``. ``TASKS``, ``PLATFORM_LIMITS`` and ``PLATFORMS`` are read-only
views of the current registry, so modules that import them follow it. Folders are read once
(cached until a file in them changes).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from smm import strict_json

LANGUAGES: dict[str, str] = {
    "de": "German",
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
}
"""The languages smm writes: language detection and the formality word lists are per language."""

# "#" and 1-100 characters that are not "#", whitespace (every character \s matches, spelled
# out: llama.cpp's grammars know no \s), quotes, backslashes or control characters, so the grammar
# Ollama and llama.cpp make from the schema can only produce valid JSON strings. The task files'
# hashtag schemas use it; the hashtags check tests each tag against it.
HASHTAG_PATTERN = r'^#[^#"\\\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,100}$'
DEFAULT_TASKS_DIR = Path(__file__).resolve().parent.parent / "conf" / "tasks"


@dataclass(frozen=True)
class Task:
    """One task type: what the model is asked and what a valid answer looks like (one task file)."""

    name: str
    title: str
    system_prompt: str
    schema: dict[str, Any]
    text_fields: tuple[str, ...]
    """Paths (``a``, ``a[].b``) of prose written in the requested language."""
    published_fields: tuple[str, ...] = ()
    """Paths of texts posted on the platform, each bound by the platform's character limit."""
    hashtag_fields: tuple[str, ...] = ()
    """Paths of hashtag lists."""
    hashtags_published: bool = False
    """Whether the hashtags are appended to the published text (and count towards its limit)."""
    addressed_fields: tuple[str, ...] = ()
    """Paths of texts that speak to the audience (where du/Sie, tu/vous, ... is checked)."""
    fact_source: str = ""
    """Where the facts the answer must keep come from: ``prompt`` (all of it), ``quoted`` (the
    quoted text to rewrite) or ``""`` (the task keeps no facts, unless a case lists some)."""
    free_numbers: str = ""
    """Numbers the answer may add: ``clock`` (times of day, hours 0-24), ``score`` (values from -1
    to 1) or ``""`` (none beyond the request's)."""
    checks: tuple[str, ...] = ()
    """The evaluation checks that apply to the task (smm/eval/checks.py), where the case asks for them."""
    example: dict[str, Any] = field(default_factory=dict)
    """A minimal valid answer (documentation, and a test fixture for the schema)."""
    eval_cases: tuple[dict, ...] = ()
    """Built-in evaluation cases of the task (rows of a case file without ``task``)."""
    source: str = ""
    """The task file."""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.schema["properties"])

    @cached_property
    def system_message(self) -> dict[str, str]:
        """The system turn, one dict shared by every conversation of the task (feedback maps millions)."""
        return {"role": "system", "content": self.system_prompt}


@dataclass(frozen=True)
class Registry:
    """The tasks of one task folder and the platforms' character limits."""

    folder: Path
    tasks: dict[str, Task]
    platform_limits: dict[str, int]
    _validators: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def contract_hash(self) -> str:
        """SHA-256 (16 hex digits) of what the app and the model agree on: each task's name, system
        prompt and JSON schema. Recorded in manifests; a different hash means a different contract."""
        contract = {name: {"system_prompt": t.system_prompt, "schema": t.schema} for name, t in sorted(self.tasks.items())}
        return hashlib.sha256(json.dumps(contract, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]

    def validator(self, kind: str, task_name: str):
        """The task's schema validator, built once: ``jsonschema`` (lists every error) or ``fast``
        (fastjsonschema: compiled to Python, raises on the first error, ~20x faster)."""
        key = (kind, task_name)
        if key not in self._validators:
            schema = self.tasks[task_name].schema
            if kind == "fast":
                import fastjsonschema

                self._validators[key] = fastjsonschema.compile(schema)
            else:
                from jsonschema import Draft202012Validator

                self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]


_loaded: dict[Path, tuple[tuple, Registry]] = {}
_current: list[Registry] = []


def _stamp(folder: Path) -> tuple:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())) if folder.is_dir() else ()


def load_registry(folder: str | Path = DEFAULT_TASKS_DIR) -> Registry:
    """The registry of a task folder, read and validated once (again when a file in it changes);
    ``ConfigError`` naming the file and key of the first problem."""
    from smm.task_files import read_folder

    folder = Path(folder).resolve()
    stamp = _stamp(folder)
    if folder not in _loaded or _loaded[folder][0] != stamp:
        tasks, platforms = read_folder(folder)
        _loaded[folder] = (stamp, Registry(folder, tasks, platforms))
    return _loaded[folder][1]


def use(tasks_dir: str | Path) -> Registry:
    """Load ``tasks_dir`` (the config's) and make it the registry every module reads."""
    registry = load_registry(tasks_dir)
    _current[:] = [registry]
    return registry


def current() -> Registry:
    """The registry in use: the last :func:`use`'s, else the repository's ``conf/tasks``."""
    if not _current:
        _current.append(load_registry(DEFAULT_TASKS_DIR))
    return _current[0]


class _TasksView(Mapping):
    """The current registry's tasks by name."""

    def __getitem__(self, name: str) -> Task:
        return current().tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(current().tasks)

    def __len__(self) -> int:
        return len(current().tasks)

    def __repr__(self) -> str:
        return f"TASKS({', '.join(self)})"


class _LimitsView(Mapping):
    """The current registry's platforms and their character limits."""

    def __getitem__(self, platform: str) -> int:
        return current().platform_limits[platform]

    def __iter__(self) -> Iterator[str]:
        return iter(current().platform_limits)

    def __len__(self) -> int:
        return len(current().platform_limits)

    def __repr__(self) -> str:
        return f"PLATFORM_LIMITS({dict(self)})"


class _PlatformsView(Sequence):
    """The current registry's platform names, in order."""

    def __getitem__(self, index):
        return tuple(current().platform_limits)[index]

    def __len__(self) -> int:
        return len(current().platform_limits)

    def __iter__(self) -> Iterator[str]:
        return iter(current().platform_limits)

    def __contains__(self, platform: object) -> bool:
        return platform in current().platform_limits

    def __repr__(self) -> str:
        return f"PLATFORMS{tuple(self)}"


TASKS: Mapping[str, Task] = _TasksView()
PLATFORM_LIMITS: Mapping[str, int] = _LimitsView()
"""Characters a post may have on each platform (the published text, hashtags included)."""
PLATFORMS: Sequence[str] = _PlatformsView()


def schema_validator(task_name: str):
    """The task's jsonschema validator (lists every error, with its location)."""
    return current().validator("jsonschema", task_name)


def fast_validator(task_name: str):
    """The task's schema compiled to Python by fastjsonschema: raises on the first error, ~20x faster."""
    return current().validator("fast", task_name)


def schema_errors(task: Task, answer: Any) -> list[str]:
    """Every way ``answer`` breaks the task's JSON schema, as short ``path: message`` strings.

    A valid answer is confirmed by the schema compiled to Python (fast: prepare reads millions);
    an invalid one is described by jsonschema, which lists every error.
    """
    import fastjsonschema

    try:
        fast_validator(task.name)(answer)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    errors = sorted(schema_validator(task.name).iter_errors(answer), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path.removeprefix('$.') or '$'}: {e.message}" for e in errors]


def parse_answer(task: Task, text: str) -> tuple[Any, list[str]]:
    """Parse an assistant reply strictly as JSON and validate it: ``(answer, errors)``."""
    try:
        answer = strict_json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, [f"not valid JSON ({exc})"[:200]]
    return answer, schema_errors(task, answer)


def values_at(answer: Any, path: str) -> Iterator[Any]:
    """Values at a registry path: ``post`` → the post; ``variations[].post`` → each variation's post."""
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    key = head[:-2] if many else head
    if not isinstance(answer, dict) or key not in answer:
        return
    value = answer[key]
    items = value if many and isinstance(value, list) else [value] if not many else []
    for item in items:
        if rest:
            yield from values_at(item, rest)
        else:
            yield item


def texts(task: Task, answer: Any) -> list[str]:
    """The prose of an answer that must be in the requested language."""
    return [v for path in task.text_fields for v in values_at(answer, path) if isinstance(v, str)]


def hashtags(task: Task, answer: Any) -> list[str]:
    """Every hashtag of an answer, in field order."""
    return [
        tag
        for path in task.hashtag_fields
        for tags in values_at(answer, path)
        if isinstance(tags, list)
        for tag in tags
        if isinstance(tag, str)
    ]


def published_lengths(task: Task, answer: Any) -> list[int]:
    """Characters of each text that would be published, hashtags included where the task appends them."""
    tags = hashtags(task, answer) if task.hashtags_published else []
    suffix = len(" ".join(tags)) + 1 if tags else 0
    return [len(v) + suffix for path in task.published_fields for v in values_at(answer, path) if isinstance(v, str)]
