"""The docs cannot drift from the code (as sqlite-utils' tests/test_docs.py does for its CLI):

- every `asl-sweep ...`, `python -m asl_sweep.train ...` and `make ...` command line in README.md and
  docs/*.md (fenced code blocks and inline code) names a subcommand that exists exactly, and each
  `--option` on it exists on that subcommand's parser; every make target and `VAR=` exists in the Makefile;
- every subcommand and make target is in the README, every ASL_SWEEP_* variable the package reads is in
  docs/config.md;
- the generated references (docs/cli.md, docs/config.md) are what `make docs` (cog) would write now."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from asl_sweep import cli, config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
GENERATED = [REPO / "docs" / "cli.md", REPO / "docs" / "config.md"]
MAKEFILE = (REPO / "Makefile").read_text()


# --- what the code has -----------------------------------------------------------------------------

def sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def subcommands() -> list[str]:
    return sorted(sub_parsers(cli.build_parser()))


def make_targets() -> list[str]:
    phony = re.search(r"^\.PHONY:(.*)$", MAKEFILE, re.M)
    return sorted(phony.group(1).split())


def makefile_rules() -> dict[str, str]:
    """Each target of the Makefile and its recipe."""
    rules, name = {}, None
    for line in MAKEFILE.splitlines():
        if m := re.match(r"^([A-Za-z][\w.-]*)\s*:(?!=)", line):
            name = m.group(1)
            rules[name] = ""
        elif line.startswith("\t") and name:
            rules[name] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            name = None
    return rules


def make_variables() -> set[str]:
    return set(re.findall(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)\s*[?:+]?=", MAKEFILE, re.M))


def env_vars() -> list[str]:
    found = set()
    for path in (REPO / "asl_sweep").glob("*.py"):
        found |= set(re.findall(r"\"(ASL_SWEEP_[A-Z_]+)\"", path.read_text()))
    return sorted(found)


# --- what the docs say -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    where: str  # file:line
    words: tuple[str, ...]  # the command's words, "asl-sweep" or "make" first

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.words)}"


SEPARATORS = {";", "&&", "||", "|", "&", ";;"}


def words_of(text: str) -> list[list[str]]:
    """Shell words of one line, split into simple commands at ; && || |. Placeholders (`<id>`) become one
    word; optional brackets around words (`[--run N]`) are dropped."""
    text = re.sub(r"<[^<>]*>", "PLACEHOLDER", text.replace("\\|", "|"))
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in prose: take it word by word
        tokens = text.split()
    commands, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            token = token.strip("[](),")
            if token:
                current.append(token)
    return [*commands, current]


def commands_in(text: str) -> list[tuple[int, list[str]]]:
    """(line number, words) of each `asl-sweep`, `python -m asl_sweep.train` or `make` command in a
    Markdown text: every line of a fenced code block, and every inline code span."""
    found = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        pieces = [line.lstrip().removeprefix("$ ")] if fenced else re.findall(r"`([^`]+)`", line)
        for piece in pieces:
            for words in words_of(piece):
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value before it
                    words = words[1:]
                if words and words[:3] == ["python", "-m", "asl_sweep.train"]:
                    words = ["asl-sweep", "train", *words[3:]]
                if words and (words[0] == "make" or Path(words[0]).name == "asl-sweep"):
                    found.append((number, ["asl-sweep" if words[0] != "make" else "make", *words[1:]]))
    return found


def documented_commands() -> list[Command]:
    out = []
    for path in [README, *DOCS]:
        for number, words in commands_in(path.read_text()):
            out.append(Command(f"{path.relative_to(REPO)}:{number}", tuple(words)))
    return out


# --- checking one command --------------------------------------------------------------------------

def option_names(word: str) -> list[str]:
    """`--epochs=3` -> [--epochs]; `--pause/--resume` -> both; `--project/-p` -> both."""
    return [part.split("=", 1)[0] for part in word.split("/") if part.startswith("-")]


def check_options(parser: argparse.ArgumentParser, words: list[str], what: str, train: bool = False) -> list[str]:
    problems = []
    for word in words:
        if not word.startswith("-") or word == "-" or re.fullmatch(r"-\d.*", word):
            continue
        for name in option_names(word):
            if name in parser._option_string_actions or "PLACEHOLDER" in name:  # `--<key>=<value>`: any key
                continue
            if train and name.startswith("--") and "=" in word and name[2:] in config.KNOWN_KEYS:
                continue  # `asl-sweep train --key=value` sets a config value
            problems.append(f"{what} has no option {name}")
    return problems


def check_asl_sweep(words: list[str]) -> list[str]:
    parser = cli.build_parser()
    what = "asl-sweep"
    rest = list(words)
    while rest and rest[0].startswith("-"):  # options before the subcommand: the top-level parser's
        problems = check_options(parser, [rest.pop(0)], what)
        if problems:
            return problems
    while (choices := sub_parsers(parser)) and rest:
        name = rest.pop(0)
        if name == "PLACEHOLDER" or name == "...":
            return []  # `asl-sweep <command>`: no particular one
        if name not in choices:
            return [f"{what} has no subcommand {name!r} (it has: {', '.join(choices)})"]
        parser, what = choices[name], f"{what} {name}"
    return check_options(parser, rest, what, train=what == "asl-sweep train")


def check_make(words: list[str]) -> list[str]:
    rules, variables = makefile_rules(), make_variables()
    problems, targets = [], []
    for word in words:
        if m := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", word):
            if m.group(1) not in variables:
                problems.append(f"the Makefile has no variable {m.group(1)}")
        elif word.startswith("-") or word in ("PLACEHOLDER", "..."):
            continue
        elif word not in rules:
            problems.append(f"the Makefile has no target {word!r}")
        else:
            targets.append(word)
    args = next((w.split("=", 1)[1] for w in words if w.startswith("ARGS=")), "")
    for target in targets:  # ARGS go to the asl-sweep subcommand the target runs
        if args and (m := re.search(r"\$\(BIN\)/asl-sweep (\w+)", rules[target])):
            problems += check_asl_sweep([m.group(1), *shlex.split(args)])
    return problems


def check(command: Command) -> list[str]:
    words = list(command.words)
    return check_make(words[1:]) if words[0] == "make" else check_asl_sweep(words[1:])


# --- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", documented_commands(), ids=str)
def test_every_documented_command_exists_with_its_options(command):
    assert check(command) == []


@pytest.mark.parametrize("line, problem", [
    ("asl-sweep sweeps", None),
    ("asl-sweep sweepz sweeps/bayes.yaml", "no subcommand 'sweepz'"),
    ("asl-sweep status <id> [--run N]", None),
    ("asl-sweep status <id> --runs 2", "asl-sweep status has no option --runs"),
    ("asl-sweep sweep --pause/--resume/--stop/--cancel <id>", None),
    ("asl-sweep sweep --pause/--halt <id>", "asl-sweep sweep has no option --halt"),
    ("asl-sweep sweep sweeps/bayes.yaml --quiet", "asl-sweep sweep has no option --quiet"),  # agent's, not sweep's
    ("asl-sweep ledger copy <id> a.db postgresql://h/db", None),
    ("asl-sweep ledger move <id> a b", "no subcommand 'move'"),
    ("asl-sweep --debug train --epochs=3 --config c.yaml", None),
    ("python -m asl_sweep.train --epochs=3", None),
    ("asl-sweep train --epoch=3", "asl-sweep train has no option --epoch"),
    ("make agent SWEEP=<id> COUNT=3; asl-sweep status <id>", None),
    ("make agents SWEEP=<id>", "no target 'agents'"),
    ("make agent SWEPT=x", "no variable SWEPT"),
    ('make train ARGS="--epochs=3"', None),
    ('make train ARGS="--epoch=3"', "asl-sweep train has no option --epoch"),
])
def test_the_check_matches_commands_and_options_exactly(line, problem):
    found = commands_in(f"`{line}`")
    problems = [p for _, words in found for p in check(Command("-", tuple(words)))]
    assert found
    assert problems == [] if problem is None else problem in " ".join(problems), problems


def test_commands_are_found_in_code_blocks_and_inline_code():
    text = "```bash\nexport X=1\nasl-sweep status <id>; asl-sweep report <id>   # comment\n```\nsee `make sweep`"
    assert [words for _, words in commands_in(text)] == [
        ["asl-sweep", "status", "PLACEHOLDER"], ["asl-sweep", "report", "PLACEHOLDER"], ["make", "sweep"]]


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_is_in_the_readme(name):
    readme = {c.words[1] for c in documented_commands() if c.where.startswith("README.md") and len(c.words) > 1}
    assert name in readme


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_is_in_the_readme(target):
    readme = {c.words[1] for c in documented_commands()
              if c.where.startswith("README.md") and c.words[0] == "make" and len(c.words) > 1}
    assert target in readme


@pytest.mark.parametrize("var", env_vars())
def test_every_environment_variable_is_in_the_configuration_reference(var):
    assert f"`{var}`" in (REPO / "docs" / "config.md").read_text()


def test_the_lists_are_not_empty():
    assert len(subcommands()) >= 10 and "install" in make_targets() and "ASL_SWEEP_LEDGER" in env_vars()
    assert len(documented_commands()) > 50


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_the_generated_references_are_current(path, capsys):
    from cogapp import Cog

    made_with = re.search(r"^Generated with Python (\d+)\.(\d+)", path.read_text(), re.M)
    if made_with and tuple(map(int, made_with.groups())) != sys.version_info[:2]:
        pytest.skip(f"{path.name} is argparse's help as Python {'.'.join(made_with.groups())} writes it")

    status = Cog().main(["cog", "--check", str(path)])
    assert status == 0, f"{path.name} is stale: run `make docs`\n{capsys.readouterr().out}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links() -> list[tuple[str, str]]:
    out = []
    for path in [README, *DOCS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"[a-z]+://", target):
                    out.append((f"{path.relative_to(REPO)}:{number}", target))
    return out


@pytest.mark.parametrize("where, target", links(), ids=lambda x: x)
def test_every_relative_link_and_anchor_exists(where, target):
    source = REPO / where.split(":")[0]
    file, _, anchor = target.partition("#")
    path = (source.parent / file).resolve() if file else source
    assert path.exists(), f"{where}: {file} does not exist"
    if anchor and path.suffix == ".md":
        headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
        assert anchor in {slug(h) for h in headings}, f"{where}: no heading #{anchor} in {path.name}"
