from __future__ import annotations

import pytest
import torch

from shared import models
from shared.errors import InvalidInput
from shared.tensors import state_tensors

SMALL = "segresnet-small"
TINY = {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    assert same_weights(models.build(SMALL, seed=7), models.build(SMALL, seed=7))
    assert not same_weights(models.build(SMALL, seed=7), models.build(SMALL, seed=8))
    assert same_weights(models.build(SMALL, TINY, seed=1), models.build(SMALL, TINY, seed=1))


def test_build_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build(SMALL, TINY, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_segresnet_is_the_brats_tutorial_network() -> None:
    net = models.build("segresnet", seed=0)
    assert models.count_parameters(net) == 4_702_227
    params = models.resolve_params("segresnet")
    assert params.init_filters == 16
    assert params.blocks_down == (1, 2, 2, 4)
    assert params.blocks_up == (1, 1, 1)
    assert params.dropout_prob == 0.2
    assert (params.in_channels, params.out_channels) == (4, 3)


def test_small_model_maps_four_modalities_to_three_regions() -> None:
    net = models.build(SMALL, seed=0).eval()
    assert models.count_parameters(net) < 1_000_000
    with torch.no_grad():
        out = net(torch.zeros(1, 4, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)
    assert set(state_tensors(net.state_dict())) == set(net.state_dict())


def test_params_come_from_data_over_defaults() -> None:
    params = models.resolve_params(SMALL, {"init_filters": 16})
    assert params.init_filters == 16
    assert params.blocks_down == (1, 1, 1, 1)
    # JSON gives lists; the manifest round trip must rebuild the same network
    assert models.resolve_params(SMALL, params.model_dump(mode="json")) == params


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("unet-from-a-class-path", {}),
        (SMALL, {"init_filters": 0}),
        (SMALL, {"init_filters": 4}),  # GroupNorm has 8 groups
        (SMALL, {"dropout_prob": 1.0}),
        (SMALL, {"blocks_down": []}),
        (SMALL, {"__class__": "os.system"}),
        (SMALL, {"init_filters": "eight"}),
    ],
)
def test_unknown_models_and_bad_params_are_refused(name: str, params: dict[str, object]):
    with pytest.raises(InvalidInput) as info:
        models.build(name, params)
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"in_channels": 10**9}, "model_params.in_channels"),
        ({"out_channels": 10**6}, "model_params.out_channels"),
        ({"blocks_down": [10**6], "blocks_up": []}, "model_params.blocks_down.0"),
        ({"blocks_down": [0, 1], "blocks_up": [1]}, "model_params.blocks_down.0"),
        ({"blocks_down": [1, 1], "blocks_up": [1, 1, 1]}, "model_params"),
        ({"init_filters": 128, "blocks_down": [1, 2, 2, 4, 4, 4], "blocks_up": [1] * 5}, "model"),
    ],
)
def test_absurd_params_are_refused_before_anything_is_built(
    params: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        models.resolve_params(SMALL, params)
    assert field in info.value.message


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"init_filters": 32},
        {"blocks_down": [1], "blocks_up": []},
        {"init_filters": 8, "blocks_down": [2, 1, 3], "blocks_up": [2, 1], "in_channels": 2},
    ],
)
def test_parameter_count_is_what_monai_builds(params: dict[str, object]) -> None:
    resolved = models.resolve_params("segresnet", params)
    net = models.build("segresnet", params)
    assert resolved.parameter_count() == models.count_parameters(net)


def test_the_parameter_bound_admits_the_brats_network_with_double_filters() -> None:
    assert models.resolve_params("segresnet", {"init_filters": 32}).parameter_count() < (
        models.MAX_PARAMETERS
    )
