"""Help that helps: every option of every ``fedseg`` command says what it does.

Walks the whole command tree, so an option added without help text fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fedseg.cli import app

# Options that fall back to an environment variable read outside click (settings).
ENV_FALLBACKS = {
    ("client", "--state-dir"): "FEDSEG_STATE_DIR",
    ("client", "--data"): "FEDSEG_DATA_DIR",
    ("client", "--server"): "FEDSEG_SERVER_URL",
    ("client", "--token"): "FEDSEG_ENROLL_TOKEN",
    ("admin", "--token-file"): "FEDSEG_ADMIN_TOKEN",
}


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (typer ships its own click, so no isinstance)."""
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = [(path, command) for path, command in _commands(ROOT) if path]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help_and_a_visible_default(path, command):
    assert (command.help or command.short_help or "").strip(), f"{path}: no description"
    for param in command.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"fedseg {' '.join(path)} {param.opts[0]}: no help"
            if not param.is_flag and not param.required and param.default is None:
                # None means something (a fallback, "latest", "none"): say what
                assert isinstance(param.show_default, str) or re.search(
                    r"default|\$FEDSEG_|FEDSEG_", param.help or ""
                ), f"fedseg {' '.join(path)} {param.opts[0]}: what does leaving it out do?"
        elif param.param_type_name == "argument":
            assert getattr(param, "help", None), f"fedseg {' '.join(path)} {param.name}: no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_rendered_help_is_clean_and_names_the_environment(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    assert not re.search(r"\[/?(bold|red|green|yellow|dim)[^\]]*\]", text), text
    for param in command.params:
        if param.param_type_name == "option":
            for var in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
                assert var in text, f"fedseg {' '.join(path)}: help does not show {var}"
            wanted = ENV_FALLBACKS.get((path[0], param.opts[0]))
            if wanted:
                assert wanted in text, f"fedseg {' '.join(path)} {param.opts[0]}: name {wanted}"


def test_model_choices_are_listed():
    result = CliRunner().invoke(app, ["client", "train-local", "--help"], env={"COLUMNS": "200"})
    assert "segresnet-small" in result.output and "segresnet|" in result.output.replace(" ", "")
