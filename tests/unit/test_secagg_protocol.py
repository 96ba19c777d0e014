"""Whole rounds in process: exact to the quantisation bound, dropouts, refusals, no leaks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.errors import Conflict, IntegrityError, InvalidInput
from shared.secagg import masks
from shared.secagg import site as site_steps
from shared.secagg.aggregation import MaskedSum
from shared.secagg.config import levels, weight_cap
from shared.secagg.consistency import sign_survivors
from shared.secagg.keys import round_keys_bytes, round_keys_from_bytes
from shared.secagg.messages import UnmaskAnswer, UnmaskRequest
from tests.unit.secagg_rounds import (
    CONTEXT,
    Round,
    answers_from,
    fedavg,
    make_spec,
    mask,
    run_round,
    share,
    sign,
    start,
    unmask,
    upload,
)

SPEC = make_spec({"conv.weight": (4, 3, 3), "conv.bias": (4,), "head": (50,)})
# leak checks compare correlations: 4000 coordinates put chance correlations near 0.016
LEAK_SPEC = make_spec({"conv.weight": (40, 10, 9), "head": (400,)})
CLIP = 0.05


def random_deltas(
    names: list[str], seed: int, scale: float = 0.02, spec: list | None = None
) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        name: {
            item.name: rng.normal(0, scale, item.shape).astype(np.float32) for item in spec or SPEC
        }
        for name in names
    }


def bound(contributors: int, total_weight: int, clip: float = CLIP, bits: int = 16) -> float:
    """Stochastic rounding errs by < 1 unit per site: the mean by < n / (L W / c); plus float32."""
    return contributors * clip / (levels(bits) * total_weight) + 1e-7 * clip


def assert_close(
    mean: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: float
) -> None:
    assert set(mean) == set(reference)
    for name in reference:
        assert mean[name].shape == reference[name].shape
        assert np.max(np.abs(mean[name] - reference[name])) <= tolerance, name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(), count=st.integers(min_value=3, max_value=8), bits=st.sampled_from([12, 16, 20])
)
def test_unmasked_mean_equals_fedavg_within_the_quantisation_bound(
    data: st.DataObject, count: int, bits: int
) -> None:
    names = [f"site-{i}" for i in range(count)]
    threshold = data.draw(st.integers(min_value=2, max_value=count))
    cap = min(weight_cap(bits=bits, sites=count), 10_000)
    weights = {name: data.draw(st.integers(min_value=1, max_value=cap)) for name in names}
    dropped = frozenset(data.draw(st.lists(st.sampled_from(names), max_size=count - threshold)))
    scale = data.draw(st.sampled_from([0.001, 0.02, 0.2]))  # 0.2: many coordinates get clipped
    deltas = random_deltas(names, data.draw(st.integers(0, 2**16)), scale)
    _state, mean, total = run_round(
        deltas, weights, threshold=threshold, spec=SPEC, drop_before_input=dropped, bits=bits
    )
    kept = {name: deltas[name] for name in names if name not in dropped}
    assert total == sum(weights[name] for name in kept)
    assert_close(mean, fedavg(kept, weights, CLIP), bound(len(kept), total, bits=bits))


def test_quantisation_error_is_noise_not_bias() -> None:
    names = ["a", "b", "c"]
    deltas = random_deltas(names, 7, spec=LEAK_SPEC)
    weights = {"a": 1, "b": 1, "c": 1}
    _state, mean, total = run_round(deltas, weights, threshold=2, spec=LEAK_SPEC, bits=8)
    error = np.concatenate([(mean[k] - fedavg(deltas, weights, CLIP)[k]).ravel() for k in mean])
    unit = CLIP / (levels(8) * total)  # the error is a sum of 3 roundings, each in (-1, 1)
    assert np.max(np.abs(error)) < 3 * unit
    assert np.std(error) > 0.2 * unit  # it is noise...
    # ...with mean zero: over 4000 coordinates its mean has sd <= 0.014 units; 0.1 is 7 sd
    assert abs(error.mean()) < 0.1 * unit


def full_round_until_inputs(
    names: list[str], threshold: int, *, missing: frozenset[str] = frozenset(), spec=SPEC
):
    deltas = random_deltas(names, 3, spec=spec)
    weights = {name: 10 + index for index, name in enumerate(names)}
    state = start(names, threshold=threshold, spec=spec)
    share(state)
    for name in names:
        if name not in missing:
            upload(state, mask(state, name, deltas[name], weights[name]))
    return state, deltas, weights


def test_a_site_that_drops_after_its_masked_input_still_counts() -> None:
    names = ["a", "b", "c", "d", "e"]
    state, deltas, weights = full_round_until_inputs(names, threshold=3)
    request = state.server.unmask_request()
    assert request.survivors == set(names) and not request.dropped
    request = sign(state, request, ["a", "c", "e"])  # b and d are gone already
    mean, total = state.server.unmask(
        answers_from(state, request, ["a", "c", "e"]), request
    )  # b, d gone
    assert total == sum(weights.values())
    assert_close(mean, fedavg(deltas, weights, CLIP), bound(5, total))


def test_a_site_that_drops_before_its_masked_input_is_left_out() -> None:
    names = ["a", "b", "c", "d"]
    state, deltas, weights = full_round_until_inputs(names, threshold=3, missing=frozenset({"b"}))
    request = state.server.unmask_request()
    assert request.dropped == {"b"}
    request = sign(state, request, ["a", "c", "d"])
    mean, total = state.server.unmask(answers_from(state, request, ["a", "c", "d"]), request)
    kept = {name: deltas[name] for name in ("a", "c", "d")}
    assert total == sum(weights[name] for name in kept)
    assert_close(mean, fedavg(kept, weights, CLIP), bound(3, total))


def test_a_site_that_drops_before_sharing_is_not_in_the_round() -> None:
    names = ["a", "b", "c", "d"]
    deltas = random_deltas(names, 5)
    weights = dict.fromkeys(names, 4)
    state, mean, total = run_round(
        deltas, weights, threshold=3, spec=SPEC, drop_before_share=frozenset({"d"})
    )
    assert total == 12 and "d" not in state.server.shared
    assert_close(mean, fedavg({n: deltas[n] for n in "abc"}, weights, CLIP), bound(3, 12))
    late = mask(state, "d", deltas["d"], 4)  # it cannot join after the share step
    with pytest.raises(Conflict, match="did not finish the share step"):
        state.server.add(late)


def test_sparse_graph_above_sixteen_sites_with_dropouts() -> None:
    names = [f"s{i:02d}" for i in range(20)]
    deltas = random_deltas(names, 11)
    weights = {name: 1 + i for i, name in enumerate(names)}
    dropped = frozenset({"s03", "s11"})
    state, mean, total = run_round(
        deltas, weights, threshold=3, spec=SPEC, degree=4, drop_before_input=dropped
    )
    assert all(len(peers) == 4 for peers in state.graph.values())
    kept = {n: deltas[n] for n in names if n not in dropped}
    assert_close(mean, fedavg(kept, weights, CLIP), bound(len(kept), total))


def stored_arrays(state: Round) -> list[np.ndarray]:
    return [item for item in state.server_saw if isinstance(item, np.ndarray)]


def assert_nothing_close_to_any_delta(state: Round, deltas, weights) -> None:
    """Read every stored vector as if it were one site's quantised input: it must not be one."""
    stored = stored_arrays(state)
    assert stored
    unit = CLIP / levels(state.bits)
    for vector in stored:
        signed = vector.view(np.int32).astype(np.float64)
        for name, delta in deltas.items():
            flat = np.concatenate([np.clip(delta[i.name], -CLIP, CLIP).ravel() for i in state.spec])
            decoded = signed[:-1] * unit / weights[name]
            close = np.mean(np.abs(decoded - flat) < CLIP / 10)
            assert close < 0.02, f"a stored vector is close to {name}'s delta"
            assert abs(np.corrcoef(decoded, flat)[0, 1]) < 0.1  # 6 sigma of chance
            assert int(signed[-1]) != weights[name]  # nor does it give away a sample count


def unmasked_by_hand(state: Round, name: str, masked: np.ndarray) -> np.ndarray:
    """Strip every mask from one site's input with its secrets: what the server must never do."""
    single = masked.copy()
    own = state.sites[name].keys
    removal = [masks.Mask(seed=own.seed, sign=-1)]
    for peer in sorted(state.graph[name]):
        seed = masks.pair_seed(
            own.mask,
            own_site=name,
            peer_site=peer,
            peer_mask_key=state.adverts[peer].mask_key,
            context=CONTEXT,
        )
        removal.append(masks.Mask(seed=seed, sign=-masks.pair_sign(name, peer)))
    masks.apply_masks(single, removal)
    return single


def test_nothing_the_server_stores_is_close_to_any_sites_delta() -> None:
    names = ["a", "b", "c", "d"]
    deltas = random_deltas(names, 13, scale=0.03, spec=LEAK_SPEC)
    weights = {"a": 3, "b": 40, "c": 7, "d": 100}
    state, _mean, _total = run_round(
        deltas, weights, threshold=3, spec=LEAK_SPEC, drop_before_input=frozenset({"c"})
    )
    assert_nothing_close_to_any_delta(state, deltas, weights)
    # the shares it saw are never both kinds for one site
    revealed: dict[str, set[str]] = {}
    for answer in (item for item in state.server_saw if isinstance(item, UnmaskAnswer)):
        for item in answer.shares:
            revealed.setdefault(item.peer, set()).add(item.kind)
    assert revealed == {"a": {"seed"}, "b": {"seed"}, "d": {"seed"}, "c": {"mask_key"}}
    # the check is able to fail: one input with its masks stripped is caught
    masked = mask(state, "a", deltas["a"], weights["a"]).vector
    state.server_saw.append(unmasked_by_hand(state, "a", masked))
    with pytest.raises(AssertionError, match="close to a's delta"):
        assert_nothing_close_to_any_delta(state, deltas, weights)


def test_fewer_than_threshold_survivors_fail_cleanly_revealing_nothing() -> None:
    names = ["a", "b", "c", "d", "e"]
    state, deltas, weights = full_round_until_inputs(
        names, threshold=4, missing=frozenset({"b", "d"}), spec=LEAK_SPEC
    )
    with pytest.raises(Conflict) as info:
        state.server.unmask_request()
    assert info.value.code == "secagg_threshold"
    assert not [item for item in state.server_saw if isinstance(item, UnmaskAnswer)]
    assert not any(s.revealed for s in state.sites.values())
    assert_nothing_close_to_any_delta(state, deltas, weights)


def test_a_site_refuses_to_answer_below_the_threshold() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    request = UnmaskRequest(
        CONTEXT.run_id, CONTEXT.round, frozenset({"a", "b"}), frozenset({"c", "d"})
    )
    with pytest.raises(Conflict) as info:
        answers_from(state, request, ["a"])
    assert info.value.code == "secagg_threshold"


def test_too_few_answers_fail_with_the_stable_code() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    request = sign(state, state.server.unmask_request(), ["a", "b", "c"])
    with pytest.raises(Conflict) as info:
        state.server.unmask(answers_from(state, request, ["a", "b"]), request)
    assert info.value.code == "secagg_threshold"


def test_a_request_for_both_kinds_of_share_of_one_peer_is_refused() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    both = UnmaskRequest(
        CONTEXT.run_id, CONTEXT.round, frozenset({"a", "b", "c"}), frozenset({"c", "d"})
    )
    with pytest.raises(Conflict, match="both kinds of share of c") as info:
        answers_from(state, both, ["a"])
    assert info.value.code == "secagg_refused"
    # and across two requests: first c survived, then c is said to have dropped; honest
    # survivors sign one list only, so the second carries signatures from colluders (the
    # server holding t sites' keys): the holder still refuses
    first = sign(state, _request({"a", "b", "c"}, {"d"}), ["a", "b", "c"])
    answers_from(state, first, ["a"])
    second = _request({"a", "b", "d"}, {"c"})
    with pytest.raises(Conflict, match="another survivor list") as info:
        sign(state, second, ["a"])
    assert info.value.code == "secagg_refused"
    second = _colluders_sign(state, second, ["a", "b", "d"])
    with pytest.raises(Conflict, match="already revealed the other kind of share of c, d") as info:
        answers_from(state, second, ["a"])
    assert info.value.code == "secagg_refused"
    assert state.sites["a"].revealed == {"a": "seed", "b": "seed", "c": "seed", "d": "mask_key"}
    # asking again for the same kinds is answered the same
    again = answers_from(state, first, ["a"])[0]
    assert {item.peer: item.kind for item in again.shares} == {
        "a": "seed",
        "b": "seed",
        "c": "seed",
        "d": "mask_key",
    }


def test_a_site_refuses_a_request_calling_it_dropped_or_for_another_round() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    self_dropped = UnmaskRequest(
        CONTEXT.run_id, CONTEXT.round, frozenset({"b", "c", "d"}), frozenset({"a"})
    )
    with pytest.raises(Conflict, match="this site dropped out"):
        answers_from(state, self_dropped, ["a"])
    replayed = UnmaskRequest(CONTEXT.run_id, CONTEXT.round + 1, frozenset(names), frozenset())
    with pytest.raises(Conflict, match="another round") as info:
        answers_from(state, replayed, ["a"])
    assert info.value.code == "secagg_refused"


def test_replayed_or_reordered_protocol_messages_are_refused() -> None:
    names = ["a", "b", "c"]
    state, deltas, weights = full_round_until_inputs(names, threshold=2, missing=frozenset({"c"}))
    server = state.server
    again = mask(state, "a", deltas["a"], weights["a"])
    with pytest.raises(Conflict) as info:
        server.add(again)  # a second input from a: replayed
    assert info.value.code == "update_conflict"
    stale = dataclasses.replace(
        mask(state, "c", deltas["c"], weights["c"]), round=CONTEXT.round - 1
    )
    with pytest.raises(Conflict) as info:
        server.add(stale)
    assert info.value.code == "stale_round"
    # shares: one relayed twice, or one meant for another holder
    a_box = state.relayed["a"]
    with pytest.raises(IntegrityError, match="a second share"):
        site_steps.receive_shares(
            [*a_box, a_box[0]],
            keys=state.sites["a"].keys,
            site="a",
            context=CONTEXT,
            graph=state.graph,
            adverts=state.adverts,
        )
    with pytest.raises(IntegrityError) as info:
        site_steps.receive_shares(
            state.relayed["b"],
            keys=state.sites["a"].keys,
            site="a",
            context=CONTEXT,
            graph=state.graph,
            adverts=state.adverts,
        )
    assert info.value.code == "decryption_failed"
    # an unmask answer from last round
    request = server.unmask_request()
    request = sign(state, request, ["a", "b"])
    answer = answers_from(state, request, ["a"])[0]
    with pytest.raises(Conflict):
        server.unmask([dataclasses.replace(answer, round=CONTEXT.round - 1)], request)


def test_masked_input_with_other_partners_or_length_is_refused() -> None:
    names = ["a", "b", "c"]
    state, deltas, weights = full_round_until_inputs(names, threshold=2, missing=frozenset({"a"}))
    masked = mask(state, "a", deltas["a"], weights["a"])
    with pytest.raises(IntegrityError, match="other partners"):
        state.server.add(dataclasses.replace(masked, partners=frozenset({"b"})))
    with pytest.raises(IntegrityError, match="wrong length"):
        state.server.add(dataclasses.replace(masked, vector=masked.vector[:-1]))


def test_a_corrupt_share_is_caught_by_the_commitment() -> None:
    names = ["a", "b", "c"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    request = sign(state, state.server.unmask_request(), names)
    answers = answers_from(state, request, names)
    first = answers[0]
    bad = dataclasses.replace(first.shares[0], data=bytes(32))
    answers[0] = dataclasses.replace(first, shares=(bad, *first.shares[1:]))
    with pytest.raises(IntegrityError) as info:
        state.server.unmask(answers, request)
    assert info.value.code == "hash_mismatch"


def test_dp_noise_share_is_added_before_masking() -> None:
    names = ["a", "b", "c"]
    deltas = random_deltas(names, 17, scale=0.005)
    weights = {"a": 2, "b": 3, "c": 5}
    state = start(names, threshold=2, spec=SPEC)
    share(state)
    seen: list[str] = []

    def noise(name: str, values: np.ndarray) -> np.ndarray:
        seen.append(name)
        return values + np.float32(0.01)  # a stand-in for dp_fedavg's Gaussian share

    for name in names:
        upload(state, mask(state, name, deltas[name], weights[name], perturb=noise))
    mean, total = unmask(state)
    shifted = {n: {k: v + np.float32(0.01) for k, v in d.items()} for n, d in deltas.items()}
    assert_close(mean, fedavg(shifted, weights, CLIP), bound(3, total))
    assert sorted(seen) == sorted([item.name for item in SPEC] * 3)


def test_weights_beyond_the_cap_and_bad_tensors_are_refused() -> None:
    names = ["a", "b", "c"]
    state = start(names, threshold=2, spec=SPEC, bits=20)
    share(state)
    deltas = random_deltas(names, 1)
    cap = weight_cap(bits=20, sites=3)
    with pytest.raises(InvalidInput, match=f"outside 0..{cap}"):
        mask(state, "a", deltas["a"], cap + 1)
    with pytest.raises(InvalidInput, match="differ from the round's model"):
        mask(state, "a", {"head": deltas["a"]["head"]}, 1)
    nan = {**deltas["a"], "head": np.full(50, np.nan, dtype=np.float32)}
    with pytest.raises(InvalidInput, match="non-finite"):
        mask(state, "a", nan, 1)


def _request(survivors: set[str], dropped: set[str]) -> UnmaskRequest:
    return UnmaskRequest(CONTEXT.run_id, CONTEXT.round, frozenset(survivors), frozenset(dropped))


def _colluders_sign(state: Round, request: UnmaskRequest, signers: list[str]) -> UnmaskRequest:
    signatures = {
        name: sign_survivors(
            request, site=name, context=CONTEXT, signing_key=state.sites[name].signing, signed=None
        )[0]
        for name in signers
    }
    return dataclasses.replace(request, signatures=tuple(sorted(signatures.items())))


def _sign_as(state: Round, request: UnmaskRequest, name: str) -> bytes:
    site = state.sites[name]
    signature, site.signed = sign_survivors(
        request, site=name, context=CONTEXT, signing_key=site.signing, signed=site.signed
    )
    return signature


def test_survivors_sign_one_survivor_list_per_round() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    request = state.server.unmask_request()
    first = _sign_as(state, request, "a")
    assert first == _sign_as(state, request, "a")  # the same list again: fine (a retry)
    with pytest.raises(Conflict, match="another survivor list") as info:
        _sign_as(state, _request({"a", "b", "c"}, {"d"}), "a")
    assert info.value.code == "secagg_refused"
    with pytest.raises(Conflict, match="this site dropped out"):
        _sign_as(state, _request({"a", "c", "d"}, {"b"}), "b")
    with pytest.raises(Conflict, match="another round"):
        _sign_as(state, dataclasses.replace(request, round=CONTEXT.round + 1), "b")


def test_a_request_without_t_valid_survivor_signatures_is_not_answered() -> None:
    names = ["a", "b", "c", "d"]
    state, _deltas, _weights = full_round_until_inputs(names, threshold=3)
    request = state.server.unmask_request()
    with pytest.raises(Conflict) as info:
        sign(state, request, ["a", "b"])  # the server cannot even assemble it
    assert info.value.code == "secagg_threshold"
    unsigned = request
    with pytest.raises(Conflict, match="only 0 survivors signed") as info:
        answers_from(state, unsigned, ["a"])
    assert info.value.code == "secagg_threshold"
    two = _colluders_sign(state, request, ["a", "b"])
    with pytest.raises(Conflict, match="only 2 survivors signed"):
        answers_from(state, two, ["a"])
    # signatures by a key that is not the site's, or over another list, do not count
    server_key = crypto.generate_signing_key()
    forged_sig = sign_survivors(
        request, site="c", context=CONTEXT, signing_key=server_key, signed=None
    )[0]
    forged = dataclasses.replace(two, signatures=(*two.signatures, ("c", forged_sig)))
    with pytest.raises(IntegrityError) as bad:
        answers_from(state, forged, ["a"])
    assert bad.value.code == "bad_signature"
    other = _colluders_sign(state, _request({"a", "b", "c"}, {"d"}), ["c"])
    moved = dataclasses.replace(two, signatures=(*two.signatures, *other.signatures))
    with pytest.raises(IntegrityError):
        answers_from(state, moved, ["a"])
    assert not state.sites["a"].revealed


def test_the_sum_is_closed_to_late_inputs_and_unmasked_once() -> None:
    names = ["a", "b", "c", "d"]
    state, deltas, weights = full_round_until_inputs(names, threshold=3, missing=frozenset({"d"}))
    request = state.server.unmask_request()
    late = mask(state, "d", deltas["d"], weights["d"])
    with pytest.raises(Conflict, match="counted as dropped") as info:
        state.server.add(late)  # its self-mask would never be removed
    assert info.value.code == "round_closed"
    request = sign(state, request, ["a", "b", "c"])
    answers = answers_from(state, request, ["a", "b", "c"])
    narrower = dataclasses.replace(request, survivors=frozenset({"a", "b"}))
    with pytest.raises(Conflict, match="differs from the round's survivors"):
        state.server.unmask(answers, narrower)
    state.server.unmask(answers, request)
    with pytest.raises(Conflict, match="already unmasked"):
        state.server.unmask(answers, request)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), count=st.integers(min_value=17, max_value=24))
def test_sparse_graphs_unmask_or_fail_cleanly(data: st.DataObject, count: int) -> None:
    names = [f"s{i:02d}" for i in range(count)]
    degree = data.draw(st.sampled_from([4, 6]))
    threshold = data.draw(st.integers(min_value=2, max_value=degree + 1))
    dropped = frozenset(data.draw(st.lists(st.sampled_from(names), max_size=6)))
    deltas = random_deltas(names, data.draw(st.integers(0, 1000)))
    weights = {name: 1 + i for i, name in enumerate(names)}
    state = start(names, threshold=threshold, spec=SPEC, degree=degree)
    share(state)
    for name in names:
        if name not in dropped:
            upload(state, mask(state, name, deltas[name], weights[name]))
    kept = {n: deltas[n] for n in names if n not in dropped}
    # unmaskable exactly when every site's holders keep t survivors
    feasible = all(len((state.graph[site] | {site}) - dropped) >= threshold for site in names)
    event("unmaskable" if feasible else "too few holders")
    if not feasible:
        with pytest.raises(Conflict) as info:
            unmask(state)
        assert info.value.code == "secagg_threshold"
        assert not any(s.revealed for s in state.sites.values())
        return
    mean, total = unmask(state)
    assert total == sum(weights[n] for n in kept)
    assert_close(mean, fedavg(kept, weights, CLIP), bound(len(kept), total))


def test_both_sides_resume_from_what_they_persisted() -> None:
    """A restart at any step: the site's keys from their bytes, the server's sum re-added."""
    names = ["a", "b", "c", "d"]
    deltas = random_deltas(names, 21)
    weights = {"a": 5, "b": 6, "c": 7, "d": 8}
    state = start(names, threshold=3, spec=SPEC)
    share(state)
    # site b restarts after the share step: its keys come back from its state file
    b = state.sites["b"]
    b.keys = round_keys_from_bytes(round_keys_bytes(b.keys))
    stored = [mask(state, name, deltas[name], weights[name]) for name in ("a", "b", "c")]
    for masked in stored:
        upload(state, masked)
    request = sign(state, state.server.unmask_request(), ["a", "b", "c"])
    answers = answers_from(state, request, ["a", "b", "c"])
    mean, total = state.server.unmask(answers, request)
    # the server restarts before unmasking: a fresh sum fed the stored masked inputs, the
    # stored signed request and answers, gives the very same mean
    again = MaskedSum(
        spec=SPEC,
        context=CONTEXT,
        graph=state.graph,
        adverts=state.adverts,
        shared=names,
        threshold=3,
        clip_range=CLIP,
        bits=16,
    )
    for masked in reversed(stored):
        again.add(masked)
    assert again.unmask_request() == dataclasses.replace(request, signatures=())
    same, same_total = again.unmask(answers, request)
    assert same_total == total == 18
    for name in mean:
        np.testing.assert_array_equal(same[name], mean[name])
    kept = {n: deltas[n] for n in ("a", "b", "c")}
    assert_close(mean, fedavg(kept, weights, CLIP), bound(3, total))
