"""The README stays true: config reference rendered from the schema, CI runs the Quickstart's test command."""
from __future__ import annotations

import re

from conftest import REPO

from smm.config_docs import readme_block, reference

README = (REPO / "README.md").read_text(encoding="utf-8")


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_config_reference_matches_the_schema():
    assert readme_block(README) == reference(), "run: python -m smm.config_docs --write README.md"


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = quickstart_commands()
    assert "stage=pipeline preset=demo" in demo and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci
