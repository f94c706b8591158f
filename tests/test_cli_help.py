"""Every command and every action answers --help with its usage and exit 0."""

from __future__ import annotations

import argparse

import pytest

from attractor import cli


def _commands() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(cli.build_parser(), [])
    return found


COMMANDS = _commands()


def test_the_walk_finds_the_command_groups_and_their_actions() -> None:
    assert ["identity", "create"] in COMMANDS and ["signal", "send"] in COMMANDS and ["run"] in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help_of_every_command(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*words, "--help"])
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    assert out.out.startswith("usage: ") and not out.err
