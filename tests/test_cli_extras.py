"""The CLI's hint for a missing package names the pyproject.toml extra that really installs it."""
from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib

import pytest
from conftest import REPO

from smm.cli import EXTRA_FOR_MODULE

EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group()).lower()


def _installs(extra: str) -> set[str]:
    """Distributions the extra lists (through smm[...] references) and what they require directly."""
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        if requirement.startswith("smm["):
            for inner in re.findall(r"[\w-]+", requirement[4:]):
                names |= _installs(inner)
            continue
        name = _name(requirement)
        names.add(name)
        try:
            names |= {_name(r) for r in metadata.requires(name) or [] if "extra ==" not in r}
        except metadata.PackageNotFoundError:
            pass
    return names


@pytest.mark.parametrize("module,extra", sorted(EXTRA_FOR_MODULE.items()))
def test_each_module_hint_names_an_extra_that_installs_it(module: str, extra: str):
    assert extra in EXTRAS, f"{module}: pip install -e '.[{extra}]' names no extra of pyproject.toml"
    providers = metadata.packages_distributions().get(module)
    if providers is None:  # not installed here (unsloth): the extra must at least name a package of that name
        assert module in _installs(extra)
        return
    assert {_name(p) for p in providers} & _installs(extra), f"no requirement of .[{extra}] provides {module}"
