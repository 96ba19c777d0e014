"""A run-config block (``privacy``, ``aggregation``) read from a JSON or TOML file.

`fedseg simulate` takes these blocks as files; they are validated by the run config's
own schema, so a bad value is named with its field just as the server's 422 names it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from shared.errors import InvalidInput

_T = TypeVar("_T")


def read_block(path: Path, *, option: str, key: str, example: str) -> Any:
    """The ``key`` block of a JSON or TOML file given to ``option`` (or the whole file).

    ``example`` is shown when the file does not parse, as a block one could write.
    """
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            document: Any = tomllib.loads(text.decode())
        else:
            document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InvalidInput(
            f"{option} {path} is not valid {kind} ({exc}); write the {key} block as a "
            f".json object such as {example} or a .toml table"
        ) from None
    if isinstance(document, dict) and isinstance(document.get(key), dict):
        document = document[key]
    if not isinstance(document, dict):
        raise InvalidInput(f"{option} {path} must hold an object (the {key} block)")
    return document


def block_from_file(
    path: Path,
    adapter: TypeAdapter[_T],
    *,
    option: str,
    key: str,
    tags: Collection[str],
    example: str,
    docs: str,
) -> _T:
    """The ``key`` block of ``path`` validated by ``adapter``; a bad field is named.

    ``tags`` are the union's discriminator values, left out of the field's path.
    """
    block = read_block(path, option=option, key=key, example=example)
    try:
        return adapter.validate_python(block)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if str(part) not in tags)
        raise InvalidInput(
            f"{option} {path}: {key}{'.' + where if where else ''}: {error['msg']}; "
            f"fix that field ({docs})"
        ) from None
