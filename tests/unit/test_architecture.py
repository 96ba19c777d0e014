"""The dependency rules of DESIGN §2, checked two ways: import-linter and our own AST walk.

Both tolerate packages and modules that do not exist yet, and both are shown to fail on
a throw-away tree that breaks a rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# (importer prefix, forbidden prefixes, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("shared", ("server", "client", "fedseg"), "shared imports neither side"),
    ("server", ("client",), "server and client never import each other"),
    ("client", ("server",), "server and client never import each other"),
    ("server", ("fedseg",), "server and client never import the command line"),
    ("client", ("fedseg",), "server and client never import the command line"),
    ("server.api", ("sqlalchemy", "server.db"), "routes call services; no SQL in server.api"),
    ("server.ui", ("sqlalchemy", "server.db"), "pages call services; no SQL in server.ui"),
    ("server.services", ("server.api", "fastapi", "starlette"), "services know no HTTP"),
    ("server.db", ("server.api", "server.services"), "layers run api -> services -> db"),
    ("server.storage", ("server.api", "server.services"), "layers run api -> services -> db"),
    (
        "client.training",
        ("httpx", "client.transport", "client.agent"),
        "training code never imports transport code",
    ),
    ("client.data", ("httpx", "client.transport", "client.agent"), "training code"),
    ("client.phantoms", ("httpx", "client.transport", "client.agent"), "training code"),
]
PACKAGES = ("shared", "server", "client", "fedseg")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    rule: str


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module a file imports, relative imports resolved, with line numbers."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def find_violations(root: Path) -> list[Violation]:
    """Check every module of our packages under ``root`` against `RULES`."""
    violations: list[Violation] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            if any(part.startswith(".") or part == "migrations" for part in path.parts):
                continue
            module = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, imported in imported_modules(tree, module, path.name == "__init__.py"):
                for importer, forbidden, why in RULES:
                    if _within(module, importer) and any(_within(imported, f) for f in forbidden):
                        violations.append(
                            Violation(str(path.relative_to(root)), line, module, imported, why)
                        )
    return sorted(set(violations), key=lambda v: (v.path, v.line, v.imported))


def test_the_repository_follows_the_dependency_rules() -> None:
    violations = find_violations(REPO)
    assert violations == [], "\n".join(
        f"{v.path}:{v.line}: {v.importer} imports {v.imported} ({v.rule})" for v in violations
    )


# --- import-linter, on the contracts in pyproject.toml -------------------------------------


def _exists(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return "".join(f"\n    {item}" for item in value)
    return str(value)


def importlinter_config(root: Path, config: dict[str, object]) -> str:
    """The contracts of ``config``, limited to modules that exist under ``root`` (INI)."""
    roots = [name for name in config["root_packages"] if _exists(root, name)]  # type: ignore[attr-defined]

    def internal(module: str) -> bool:
        return module.split(".")[0] in config["root_packages"]  # type: ignore[operator]

    def keep(modules: list[str]) -> list[str]:
        return [m for m in modules if (_exists(root, m) if internal(m) else True)]

    external = False
    sections: list[str] = []
    for index, contract in enumerate(config.get("contracts", [])):  # type: ignore[attr-defined]
        contract = dict(contract)
        kind = contract["type"]
        if kind == "forbidden":
            contract["source_modules"] = keep(contract["source_modules"])
            contract["forbidden_modules"] = keep(contract["forbidden_modules"])
            external |= any(not internal(m) for m in contract["forbidden_modules"])
            if not contract["source_modules"] or not contract["forbidden_modules"]:
                continue
        elif kind == "independence":
            contract["modules"] = keep(contract["modules"])
            if len(contract["modules"]) < 2:
                continue
        elif kind == "layers":
            layers = []
            for layer in contract["layers"]:
                present = keep([m.strip() for m in layer.split("|")])
                if present:
                    layers.append(" | ".join(present))
            contract["layers"] = layers
            if len(layers) < 2:
                continue
        contract = {k: v for k, v in contract.items() if v != []}
        body = "".join(f"{k} = {_ini_value(v)}\n" for k, v in contract.items())
        sections.append(f"[importlinter:contract:{index}]\n{body}")
    head = f"[importlinter]\nroot_packages = {_ini_value(roots)}\n"
    if external:
        head += "include_external_packages = True\n"
    return "\n".join([head, *sections])


def run_import_linter(root: Path, config: dict[str, object], tmp_path: Path):
    ini = tmp_path / "importlinter.ini"
    ini.write_text(importlinter_config(root, config))
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ini), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def project_config() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_linter_contracts_hold(tmp_path: Path) -> None:
    config = project_config()
    assert len(config["contracts"]) >= 4  # type: ignore[arg-type]
    result = run_import_linter(REPO, config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- both checkers can fail ---------------------------------------------------------------

BAD_TREE = {
    "shared/__init__.py": "",
    "shared/crypto.py": "import hashlib\nfrom server import app\n",
    "shared/tensors.py": "from fedseg import cli\n",
    "server/__init__.py": "",
    "server/app.py": "from client.agent import run\n",
    "server/api/__init__.py": "",
    "server/api/routes.py": "from sqlalchemy import select\nfrom ..services import rounds\n",
    "server/services/__init__.py": "",
    "server/services/rounds.py": "from shared import crypto\n",
    "client/__init__.py": "",
    "client/agent.py": "import importlib\nimportlib.import_module('server.app')\n",
    "client/transport.py": "import httpx\n",
    "client/training.py": "from . import transport\nfrom .agent import run\n",
    "client/data.py": "import httpx\n",
    "client/phantoms.py": "from shared import tensors\n",
    "fedseg/__init__.py": "",
    "fedseg/cli.py": "import server.app\nimport client.agent\n",
}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_ast_check_reports_each_broken_rule(tmp_path: Path) -> None:
    write_tree(tmp_path, BAD_TREE)
    found = {(v.importer, v.imported) for v in find_violations(tmp_path)}
    assert found == {
        ("shared.crypto", "server"),
        ("shared.crypto", "server.app"),
        ("shared.tensors", "fedseg"),
        ("shared.tensors", "fedseg.cli"),
        ("server.app", "client.agent"),
        ("server.app", "client.agent.run"),
        ("server.api.routes", "sqlalchemy"),
        ("server.api.routes", "sqlalchemy.select"),
        ("client.agent", "server.app"),
        ("client.training", "client.transport"),
        ("client.training", "client.agent"),
        ("client.training", "client.agent.run"),
        ("client.data", "httpx"),
    }


def test_the_ast_check_passes_a_clean_tree(tmp_path: Path) -> None:
    clean = {k: v for k, v in BAD_TREE.items() if k.endswith("__init__.py")}
    clean["client/training.py"] = "from shared import tensors\nimport torch\n"
    clean["server/api/routes.py"] = "from ..services import rounds\nimport fastapi\n"
    write_tree(tmp_path, clean)
    assert find_violations(tmp_path) == []


def test_import_linter_reports_a_broken_rule(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, BAD_TREE)
    result = run_import_linter(tree, project_config(), tmp_path)
    assert result.returncode != 0
    assert "shared imports neither side" in result.stdout
    assert "BROKEN" in result.stdout


@pytest.mark.parametrize("missing", ["server", "client", "server/api", "client/training.py"])
def test_the_import_linter_config_skips_what_does_not_exist_yet(
    tmp_path: Path, missing: str
) -> None:
    tree = tmp_path / "tree"
    files = {k: v for k, v in BAD_TREE.items() if not k.startswith(missing)}
    files = {k: "" for k in files}  # nothing imported: only existence matters
    write_tree(tree, files)
    text = importlinter_config(tree, project_config())
    module = missing.removesuffix(".py").replace("/", ".")
    assert f" {module}\n" not in text.replace("\n    ", "\n ")
    assert run_import_linter(tree, project_config(), tmp_path).returncode == 0
