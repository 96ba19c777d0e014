"""``fedseg simulate --aggregation FILE|strategy``: the run's aggregation block.

A strategy name runs that strategy with its schema defaults (docs/strategies.md); a
file is a JSON or TOML aggregation block (or a document with an ``aggregation``
table), validated by the run config's own schema, so a bad value is named with its
field as the server's 422 would name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, get_args

from pydantic import TypeAdapter

from fedseg.run_blocks import block_from_file
from shared.aggregation import AggregationConfig
from shared.errors import InvalidInput

_ADAPTER: Final = TypeAdapter(AggregationConfig)
STRATEGIES: Final = tuple(
    get_args(variant)[0].model_fields["strategy"].default
    for variant in get_args(get_args(AggregationConfig)[0])
)


def parse_aggregation(value: str) -> AggregationConfig:
    """A strategy name or a JSON/TOML file as a validated aggregation block."""
    if value in STRATEGIES:
        return _ADAPTER.validate_python({"strategy": value})
    path = Path(value)
    if not path.is_file():
        raise InvalidInput(
            f"--aggregation {value!r} is neither a strategy ({', '.join(STRATEGIES)}) nor a "
            "file; name one of those, or a JSON or TOML file holding an aggregation block"
        )
    return block_from_file(
        path,
        _ADAPTER,
        option="--aggregation",
        key="aggregation",
        tags=STRATEGIES,
        example='{"strategy": "trimmed_mean", "trim_fraction": 0.2}',
        docs="docs/strategies.md lists each strategy's fields",
    )
