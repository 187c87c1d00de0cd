"""Examples people copy: every `--help` example and the demo's closing recipe are valid commands,
shown as written (not re-flowed into the paragraph around them) at any terminal width."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from alft_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
GROUP = typer.main.get_command(app)


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-group, as the words that name it (``("labelstudio", "push")``)."""
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        found.append((*path, name))
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
    return found


COMMANDS = _commands(GROUP)
SEPARATORS = {"&&", "||", "|", ";"}


def example_block(text: str) -> list[str]:
    """The lines after "Example:"/"Examples:" up to the next blank line, stripped."""
    lines = [line.strip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines)
                  if line.startswith(("Example:", "Examples:"))), None)
    assert start is not None, f"no example in:\n{text}"
    first = lines[start].split(":", 1)[1].strip()
    block = [first] if first else []
    for line in lines[start + 1:]:
        if not line:
            break
        block.append(line)
    return block


def commands_in(lines: list[str]) -> list[list[str]]:
    """Shell lines (``\\`` continues a line) -> the argument lists of their alft commands."""
    found: list[list[str]] = []
    pending = ""
    for line in lines:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found += _alft_commands(shlex.split(pending + line, comments=True))
        pending = ""
    assert not pending, f"a continuation ends the example: {lines}"
    return found


def _alft_commands(tokens: list[str]) -> list[list[str]]:
    found: list[list[str]] = []
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        if segment[:1] == ["alft"]:
            found.append(segment[1:])
        elif segment[:1] == ["torchrun"] and "alft_cli" in segment:
            found.append(segment[segment.index("alft_cli") + 1:])
        segment = []
    return found


def _resolve(words: tuple[str, ...] | list[str]) -> tuple[Any, int]:
    """The (sub)command the leading words name, and how many words named it."""
    command: Any = GROUP
    used = 0
    for word in words:
        if word not in getattr(command, "commands", {}):
            break
        command, used = command.commands[word], used + 1
    return command, used


def parse(args: list[str]) -> None:
    """Parse a command line exactly as `alft` would, without running it (raises on misuse)."""
    command, used = _resolve(args)
    assert used and not hasattr(command, "commands"), f"no command in `alft {args}`"
    command.make_context(args[used - 1], list(args[used:])).close()


@pytest.mark.parametrize("name", [(), *COMMANDS], ids=lambda n: " ".join(n) or "alft")
def test_help_examples_are_shown_as_written_and_are_valid_commands(name):
    command, _ = _resolve(name)
    written = example_block(inspect.cleandoc(command.help or ""))
    assert commands_in(written), f"{name}: no alft command in its example"
    for width in (60, 200):
        shown = CliRunner().invoke(app, [*name, "--help"], terminal_width=width)
        assert shown.exit_code == 0, shown.output
        # Re-flowing merged lines and split options (`--then-` / `epochs 50`).
        assert example_block(shown.output) == written, shown.output
    for args in commands_in(written):
        try:
            parse(args)
        except Exception as exc:  # the parser's usage errors (Typer bundles its own click)
            pytest.fail(f"{name} example `alft {' '.join(args)}`: {exc}")


def test_demo_closing_recipe_is_valid_after_any_number_of_exports():
    text = (REPO / "examples" / "demo.sh").read_text()
    recipe = text.split("On your own archive:", 1)[1].split("EOT", 1)[0]
    lines = [line.strip() for line in recipe.splitlines() if line.strip().startswith("alft ")]
    assert len(lines) >= 5
    for line in lines:
        for args in commands_in([line]):
            # A glob (alft_round*.onnx) becomes several models after a second export.
            assert not any(set(a) & set("*?[") for a in args), line
            parse(args)


def test_the_demo_says_how_to_get_alft_on_the_path():
    text = (REPO / "examples" / "demo.sh").read_text()
    assert "/activate" in text
    readme = (REPO / "README.md").read_text()
    assert "source .venv/bin/activate" in readme
