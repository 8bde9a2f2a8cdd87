"""The command line as a user meets it: every command and sub-command explains itself."""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import pytest

from tunelab.cli import COMPARE_METHODS, build_parser, main
from tunelab.tasks import builtin_suites


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path in the parser tree: (), ('train',), ('human',), ('human', 'report'), ..."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(build_parser())
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "sentiment-minilm-lora.yaml")


def test_the_walk_finds_the_nested_commands():
    assert ("human", "report") in COMMANDS and ("models", "prepare") in COMMANDS and len(COMMANDS) > 20


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "tunelab")
def test_help_works_for_every_command(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: tunelab") and " ".join(path) in shown


def _parser_at(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _help_text(path: tuple[str, ...], capsys) -> str:
    """`tunelab PATH --help` as one line, so a default wrapped over two lines still reads as one phrase."""
    with pytest.raises(SystemExit):
        main([*path, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tunelab {importlib.metadata.version('tunelab')}"


def test_eval_and_forgetting_list_every_built_in_suite(capsys):
    suites = builtin_suites()
    assert {"glue-mini", "retention", "superglue-mini", "general-text"} <= set(suites)
    for command in ("eval", "forgetting"):
        shown = _help_text((command,), capsys)
        assert all(suite in shown for suite in suites), (command, shown)


def test_compare_says_how_many_models_it_trains_without_methods(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tunelab.compare.compare", lambda *args, **kwargs: tmp_path)  # plan, don't train
    methods = len(COMPARE_METHODS.split(","))
    assert f"without --methods: all {methods}, so {methods} models" in _help_text(("compare",), capsys)
    assert main(["compare", CONFIG]) == 0
    assert f"no --methods given: training all {methods} methods, {methods} models" in capsys.readouterr().out
    assert main(["compare", CONFIG, "--methods", "full,lora"]) == 0
    assert "no --methods given" not in capsys.readouterr().out


def _stated_default(action: argparse.Action) -> bool:
    """An option whose default `--help` must state: one with a value (a flag, an empty list and None say nothing)."""
    return bool(action.option_strings) and action.nargs != 0 and action.default not in (None, "", [])


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "tunelab")
def test_every_argument_is_explained_and_every_default_shown(path, capsys):
    parser = _parser_at(path)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    for action in actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions), f"a sub-command of {path} has no help"
        else:
            assert action.help, f"tunelab {' '.join(path)}: {action.option_strings or action.dest} has no help"
    shown = _help_text(path, capsys)
    for action in filter(_stated_default, actions):
        assert f"(default: {action.default})" in shown, f"tunelab {' '.join(path)} {action.option_strings[0]}"
