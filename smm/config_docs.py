"""The README's configuration reference, rendered from the schema: ``python -m smm.config_docs``."""
from __future__ import annotations

import dataclasses
import typing

from smm.config import Config


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _rows(schema: type, prefix: str):
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _rows(hints[field.name], f"{prefix}{field.name}.")
            continue
        meaning = field.metadata.get("help", "")
        choices = field.metadata.get("choices")
        if choices:
            meaning += " One of: " + ", ".join("null" if c is None else str(c) for c in choices) + "."
        yield f"| `{prefix}{field.name}` | `{_default(field)}` | {meaning} |"


def reference() -> str:
    """A Markdown table of every key: name, default, meaning."""
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *_rows(Config, "")])


START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def readme_block(readme: str) -> str:
    """The text between the README's config-reference markers."""
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def update_readme(path: str) -> None:
    text = open(path, encoding="utf-8").read()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{START}\n{reference()}\n{END}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        update_readme(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    else:
        print(reference())
