"""`fedseg` stays usable when an optional extra is missing: the group explains itself."""

from __future__ import annotations

import builtins
import importlib
import sys

import pytest
from typer.testing import CliRunner


def test_group_with_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "httpx" or name.startswith("httpx."):
            raise ModuleNotFoundError("No module named 'httpx'", name="httpx")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for module in [m for m in sys.modules if m.startswith(("fedseg", "httpx"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    cli = importlib.import_module("fedseg.cli")
    monkeypatch.setattr(builtins, "__import__", real_import)

    result = CliRunner().invoke(cli.app, ["admin", "sites", "list"])
    assert result.exit_code == 2
    assert "pip install 'fedseg[client]'" in result.output
    assert "httpx" in result.output
    # the groups whose dependencies are there still work
    assert CliRunner().invoke(cli.app, ["server", "--help"]).exit_code == 0
