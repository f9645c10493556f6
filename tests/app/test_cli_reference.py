"""The CLI reference (docs/reference.md) documents every command and every option of `aml-smear`;
the docs link to files that exist and name tests that exist.

The README is a guide and names only what a first hour needs; the reference is where a user looks
up an option, so a command or option added to app/cli/ without a line there fails here. Each
command has a heading of its own (``### `aml-smear models prune` ``), and its options must appear
under that heading, not merely somewhere in the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from app.cli import cli

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
HEADING = re.compile(r"^#{2,4} `(aml-smear(?: [a-z][a-z-]*)*)`\s*$", re.MULTILINE)


def _commands(command: click.Command, path: tuple[str, ...] = ("aml-smear",)):
    """(path, command) of the root and every command and group below it, depth first."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from _commands(sub, (*path, name))


def _long_names(command: click.Command) -> list[str]:
    """Every long option name of the command, the off-switch of a flag pair included."""
    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names += [name for name in param.opts + param.secondary_opts if name.startswith("--")]
    return names


def _sections(text: str) -> dict[str, str]:
    """The text under each ``aml-smear ...`` heading, up to the next heading of any command."""
    marks = list(HEADING.finditer(text))
    return {
        m.group(1): text[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(text))]
        for i, m in enumerate(marks)
    }


def _mentions(section: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section) is not None


def test_the_reference_documents_every_command_and_option():
    sections = _sections(REFERENCE.read_text())
    missing_commands, missing_options = [], []
    for path, command in _commands(cli):
        name = " ".join(path)
        if name not in sections:
            missing_commands.append(name)
            continue
        missing_options += [
            f"{name} {option}"
            for option in _long_names(command)
            if not _mentions(sections[name], option)
        ]
    assert not missing_commands and not missing_options, (
        f"{REFERENCE.relative_to(ROOT)} is missing\n"
        + "".join(f"  the heading ### `{name}`\n" for name in missing_commands)
        + "".join(f"  option {item} (under its command's heading)\n" for item in missing_options)
    )


def test_the_reference_names_no_command_the_cli_lacks():
    known = {" ".join(path) for path, _ in _commands(cli)}
    stale = sorted(set(_sections(REFERENCE.read_text())) - known)
    assert not stale, (
        f"{REFERENCE.relative_to(ROOT)} has headings for commands the CLI lacks: {stale}"
    )


def test_the_checks_see_the_whole_command_tree():
    # Groups and their subcommands are walked: a check that saw only the top level would pass vacuously.
    names = {" ".join(path) for path, _ in _commands(cli)}
    assert {"aml-smear models prune", "aml-smear runs show", "aml-smear runs prune"} <= names
    assert "--max-quarantined-share" in _long_names(cli.commands["score"])
    assert "--no-explain" in _long_names(cli.commands["score"])


def test_relative_links_in_the_readme_and_docs_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to files that do not exist:\n  " + "\n  ".join(broken)


def test_every_test_the_guarantees_name_exists():
    # docs/guarantees.md names the test that checks each guarantee; a renamed or removed test leaves
    # a guarantee unchecked. A bare file name is in tests/reliability/; a bare test name in the file before it.
    text = (ROOT / "docs" / "guarantees.md").read_text()
    missing, current = [], None
    for path, name, bare in re.findall(
        r"`(?:((?:tests/[\w/]+/)?test_\w+\.py)(?:::(\w+))?|(test_\w+))`", text
    ):
        if path:
            current = ROOT / (path if path.startswith("tests/") else f"tests/reliability/{path}")
            if not current.exists():
                missing.append(str(current.relative_to(ROOT)))
                continue
        name = name or bare
        if name and not re.search(rf"^\s*def {name}\(", current.read_text(), re.MULTILINE):
            missing.append(f"{current.relative_to(ROOT)}::{name}")
    assert not missing, "docs/guarantees.md names tests that do not exist: " + ", ".join(missing)
