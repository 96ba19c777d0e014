"""Console helpers shared by the admin and simulate commands: errors, JSON, formatting."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from shared.errors import FedsegError
from shared.models import REGISTRY


def _width(stream: object) -> int | None:
    """Off a terminal (logs, CI, pipes) rich assumes 80 columns; tables need more."""
    isatty = getattr(stream, "isatty", None)
    if "COLUMNS" in os.environ or (callable(isatty) and isatty()):
        return None
    return 120


MODEL_CHOICES = "[" + "|".join(sorted(REGISTRY)) + "]"  # the metavar of every --model

stdout = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def jsonable(value: Any) -> Any:
    """Wire models, lists and dicts of them as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(jsonable(value), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_json_line(value: Any) -> None:
    """Print ``value`` as one compact JSON line (for streams such as ``watch --json``)."""
    sys.stdout.write(json.dumps(jsonable(value), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: str | None = None, exit_code: int = 1) -> NoReturn:
    """Print one line to stderr and leave with ``exit_code``."""
    suffix = f" [{code}]" if code else ""
    stderr.print(f"[bold red]error:[/] {escape(message)}{escape(suffix)}")
    raise typer.Exit(exit_code)


def validation_message(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{error['msg']}{more}"


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn fedseg and validation errors into one line on stderr and exit code 1."""
    try:
        yield
    except FedsegError as exc:
        fail(exc.message, code=exc.code)
    except ValidationError as exc:
        fail(validation_message(exc), code="invalid_input")
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(130) from None


def when(value: datetime | None, *, now: datetime | None = None) -> str:
    """A timestamp for tables: local ``HH:MM:SS`` today, date and time otherwise."""
    if value is None:
        return "-"
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    local = moment.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, or None when either is missing."""
    if start is None or end is None:
        return None
    a = start if start.tzinfo else start.replace(tzinfo=UTC)
    b = end if end.tzinfo else end.replace(tzinfo=UTC)
    return (b - a).total_seconds()


def duration(seconds: float | None) -> str:
    """``1m05s``, ``12.3s`` or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def dice(value: float | None) -> str:
    """A Dice score with three decimals, or ``-``."""
    return "-" if value is None else f"{value:.3f}"


STATUS_STYLES: Mapping[str, str] = {
    "created": "dim",
    "pending": "yellow",
    "waiting": "dim",
    "open": "cyan",
    "running": "cyan",
    "downloading": "cyan",
    "evaluating": "magenta",
    "training": "magenta",
    "sealing": "blue",
    "uploading": "blue",
    "aggregating": "blue",
    "uploaded": "green",
    "active": "green",
    "closed": "green",
    "completed": "bold green",
    "failed": "bold red",
    "error": "bold red",
    "stopped": "yellow",
    "revoked": "red",
    "offline": "bold yellow",
    "cancelled": "red",
    "declined": "yellow",
    "sampled_out": "dim",
    "budget_exhausted": "bold yellow",
}


def styled(status: str) -> str:
    """Rich markup for a status word."""
    style = STATUS_STYLES.get(status)
    return f"[{style}]{escape(status)}[/]" if style else escape(status)


def first_line(text: str | None, limit: int = 60) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
