"""``fedseg``: mounts the server, client and admin command groups and ``simulate``.

Each role's commands live in their own module; this file only wires them together.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="fedseg",
    help="Federated brain-tumour segmentation: coordination server, hospital client, admin.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module, attribute, group name or None for top-level commands registered by the module)
_GROUPS: tuple[tuple[str, str, str | None], ...] = (
    ("fedseg.server_cli", "app", "server"),
    ("fedseg.client_cli", "app", "client"),
    ("fedseg.admin_cli", "app", "admin"),
    ("fedseg.phantoms_cli", "register", None),
    ("fedseg.simulate_cli", "register", None),
)


def _mount() -> None:
    for module_name, attribute, group in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that role is not built yet in this tree
                continue
            raise
        target = getattr(module, attribute)
        if group is None:
            target(app)
        else:
            app.add_typer(target, name=group)


_mount()


def main() -> None:
    """Console-script entry point."""
    app()
