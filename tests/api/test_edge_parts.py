"""The edge's pure parts: the per-address window and the Range parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.api.ranges import ByteRange, parse_range
from server.api.throttle import AddressWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_blocks_at_the_limit_and_forgets_after_it() -> None:
    clock = Clock()
    window = AddressWindow(limit=3, window_s=60, clock=clock)
    for _ in range(2):
        window.add("1.2.3.4")
    assert window.retry_after("1.2.3.4") is None
    window.add("1.2.3.4")
    assert window.retry_after("1.2.3.4") == 60
    assert window.retry_after("5.6.7.8") is None
    clock.now += 59.5
    assert window.retry_after("1.2.3.4") == 1
    clock.now += 1
    assert window.retry_after("1.2.3.4") is None
    assert window.add("1.2.3.4") == 1  # a fresh window


def test_window_memory_is_bounded() -> None:
    window = AddressWindow(limit=1, window_s=60, max_addresses=100, clock=Clock())
    for number in range(10_000):
        window.add(f"10.0.{number // 256}.{number % 256}")
    assert len(window) == 100
    assert window.retry_after("10.0.39.15") == 60  # the most recent are kept
    assert window.retry_after("10.0.0.0") is None


@given(header=st.text(max_size=200), size=st.integers(min_value=0, max_value=10**12))
def test_parse_range_never_raises_and_stays_inside(header: str, size: int) -> None:
    wanted = parse_range(header, size)
    if isinstance(wanted, ByteRange):
        assert 0 <= wanted.first <= wanted.last < size


@given(
    first=st.text("0123456789", min_size=0, max_size=6000),
    last=st.text("0123456789", min_size=0, max_size=6000),
    size=st.integers(min_value=0, max_value=10**9),
)
def test_parse_range_with_long_numbers(first: str, last: str, size: int) -> None:
    wanted = parse_range(f"bytes={first}-{last}", size)
    if isinstance(wanted, ByteRange):
        assert 0 <= wanted.first <= wanted.last < size


def test_parse_range_examples() -> None:
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 9)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-1000", 100) == ByteRange(0, 99)
    assert parse_range("bytes=50-5000", 100) == ByteRange(50, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=0-0", 0) == "unsatisfiable"
    assert parse_range("bytes=9-1", 100) is None
    assert parse_range("lines=0-1", 100) is None
    assert parse_range("bytes=0-1,3-4", 100) is None
