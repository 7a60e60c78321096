"""The README cannot drift from the code: every subcommand, Makefile target and ASL_SWEEP_* variable
the package reads is documented (as sqlite-utils' tests/test_docs.py does for its CLI)."""

import re
from pathlib import Path

import pytest

from asl_sweep import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def subcommands() -> list[str]:
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return sorted(sub.choices)


def make_targets() -> list[str]:
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    return sorted(phony.group(1).split())


def env_vars() -> list[str]:
    found = set()
    for path in (REPO / "asl_sweep").glob("*.py"):
        found |= set(re.findall(r"\"(ASL_SWEEP_[A-Z_]+)\"", path.read_text()))
    return sorted(found)


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_is_in_the_readme(name):
    assert f"asl-sweep {name}" in README


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_is_in_the_readme(target):
    assert f"make {target}" in README


@pytest.mark.parametrize("var", env_vars())
def test_every_environment_variable_is_in_the_readme(var):
    assert f"`{var}`" in README


def test_the_lists_are_not_empty():
    assert len(subcommands()) >= 10 and "install" in make_targets() and "ASL_SWEEP_LEDGER" in env_vars()
