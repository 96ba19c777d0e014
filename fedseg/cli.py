"""``fedseg``: mounts the server, client and admin command groups and ``simulate``.

Each role's commands live in their own module; this file only wires them together.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    ("fedseg.export_cli", "register", None),  # adds `admin models export`
    ("fedseg.phantoms_cli", "register", None),
    ("fedseg.simulate_cli", "register", None),
    ("fedseg.predict_cli", "register", None),
)


_OWN_PACKAGES = frozenset({"fedseg", "server", "client", "shared"})
# The extra that brings each group's third-party dependencies.
_EXTRAS: dict[str, str] = {"server": "server", "client": "client", "admin": "client"}


def _mount_missing_extra(group: str, missing: str) -> None:
    """Mount a stand-in that says which extra to install, instead of crashing `fedseg`."""
    extra = _EXTRAS[group]

    def explain(ctx: typer.Context) -> None:
        typer.echo(
            f"fedseg {group}: the Python package {missing!r} is not installed; "
            f"run: pip install 'fedseg[{extra}]'",
            err=True,
        )
        raise typer.Exit(2)

    app.command(
        name=group,
        help=f"(unavailable here: pip install 'fedseg[{extra}]')",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(explain)


def _mount() -> None:
    for module_name, attribute, group in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] in _OWN_PACKAGES:
                raise
            # a third-party dependency of an optional extra is missing
            if group is not None:
                _mount_missing_extra(group, exc.name)
            continue
        target = getattr(module, attribute)
        if group is None:
            target(app)
        else:
            app.add_typer(target, name=group)


def _hide_flag_types() -> None:
    """Typer shows ``<bool>`` as the type of every flag, but a flag takes no value."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_mount()
_hide_flag_types()


def main() -> None:
    """Console-script entry point."""
    app()
