"""``Range: bytes=…`` for one representation of known size, parsed so that it never raises.

RFC 9110 §14.2: a server may ignore a Range header; it must ignore one whose unit it
does not understand. So anything that is not a single, well-formed ``bytes`` range is
ignored (the whole bundle is sent), and a well-formed range that selects nothing is
*unsatisfiable* (416). Numbers are compared by their digits' length first, so a
position with thousands of digits is just "past the end", never an ``int()`` of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

_RANGE: Final = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)
_DIGITS: Final = 18  # below 2**63: anything longer is larger than any representation


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Inclusive positions ``first..last`` within the representation."""

    first: int
    last: int


Unsatisfiable = Literal["unsatisfiable"]


def _number(digits: str, ceiling: int) -> int:
    """``int(digits)``, or ``ceiling`` when the digits say something larger."""
    stripped = digits.lstrip("0") or "0"
    return ceiling if len(stripped) > _DIGITS else min(int(stripped), ceiling)


def parse_range(header: str, size: int) -> ByteRange | Unsatisfiable | None:
    """The range ``header`` selects from ``size`` bytes; None means "ignore it, send all"."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # another unit, several ranges, or not a range at all: ignored
    first_digits, last_digits = match.groups()
    if not first_digits and not last_digits:
        return None
    if not first_digits:  # suffix: the last N bytes
        length = _number(last_digits, size)
        return ByteRange(size - length, size - 1) if length > 0 and size > 0 else "unsatisfiable"
    first = _number(first_digits, size)
    last = _number(last_digits, size - 1) if last_digits else size - 1
    if last_digits and len(last_digits.lstrip("0")) <= _DIGITS and int(last_digits) < first:
        return None  # last before first is an invalid range-spec: ignored
    if first >= size:
        return "unsatisfiable"
    return ByteRange(first, min(last, size - 1))
