"""Mask graph: every pair up to 16 sites; above, a symmetric k-regular graph from a public seed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.secagg.graph import holders, neighbours


def names(count: int) -> list[str]:
    return [f"site-{i:03d}" for i in range(count)]


def connected(graph: dict[str, frozenset[str]]) -> bool:
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for peer in graph[todo.pop()]:
            if peer not in seen:
                seen.add(peer)
                todo.append(peer)
    return len(seen) == len(graph)


@given(st.integers(min_value=3, max_value=16))
def test_all_pairs_up_to_sixteen_sites(count: int) -> None:
    graph = neighbours(names(count), degree=4, seed=b"round-1")
    for site, peers in graph.items():
        assert peers == frozenset(names(count)) - {site}
    assert holders(graph, "site-001") == names(count)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=17, max_value=120), st.integers(min_value=2, max_value=15))
def test_k_regular_symmetric_connected_above_sixteen(count: int, degree: int) -> None:
    graph = neighbours(names(count), degree=degree, seed=b"round-7")
    even = degree + degree % 2
    for site, peers in graph.items():
        assert site not in peers
        assert len(peers) == even
        assert all(site in graph[peer] for peer in peers)
    assert connected(graph)


def test_graph_is_a_function_of_the_public_seed() -> None:
    sites = names(40)
    first = neighbours(sites, degree=6, seed=b"round-1")
    assert first == neighbours(list(reversed(sites)), degree=6, seed=b"round-1")
    assert first != neighbours(sites, degree=6, seed=b"round-2")


def test_a_degree_that_reaches_the_site_count_gives_every_pair() -> None:
    graph = neighbours(names(20), degree=19, seed=b"x")
    assert all(len(peers) == 19 for peers in graph.values())
