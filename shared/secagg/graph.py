"""Who masks with whom: every pair up to 16 sites, a k-regular graph above that.

SecAgg+ (Bell et al., CCS 2020): with a sparse graph each site expands k masks and
holds k shares instead of N, and the sum stays private as long as the graph, which
is public, is drawn independently of who is honest. The graph is a circulant on a
public pseudo-random order of the sites: the order is sorted by sha256 of a public
seed (the round's id) and the site's name, so every party derives the same graph
without talking, and no site picks its neighbours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from shared.secagg.config import ALL_PAIRS_UP_TO

Graph = dict[str, frozenset[str]]


def neighbours(sites: Sequence[str], *, degree: int, seed: bytes) -> Graph:
    """Each site's mask partners (never itself); symmetric.

    Up to `ALL_PAIRS_UP_TO` sites, or when ``degree`` reaches the number of sites,
    every pair. Otherwise each site is joined to the ``degree / 2`` sites either side
    of it in the seeded order (``degree`` rounded up to even), a ``degree``-regular graph.
    """
    names = sorted(set(sites))
    if len(names) != len(sites):
        raise ValueError("site names must be unique")
    even = degree + degree % 2
    if len(names) <= ALL_PAIRS_UP_TO or even >= len(names) - 1:
        everyone = frozenset(names)
        return {name: everyone - {name} for name in names}
    order = sorted(names, key=lambda name: hashlib.sha256(seed + b"\x00" + name.encode()).digest())
    count = len(order)
    graph: Graph = {}
    for index, name in enumerate(order):
        graph[name] = frozenset(
            order[(index + step) % count]
            for offset in range(1, even // 2 + 1)
            for step in (offset, -offset)
        )
    return graph


def holders(graph: Graph, site: str) -> list[str]:
    """Who holds shares of ``site``'s secrets, in share-index order: its neighbours and itself."""
    return sorted(graph[site] | {site})
