"""The mechanisms at the site: noise source, dp_fedavg, svt, and Opacus on SegResNet."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.grad_sample.utils import wrap_model
from opacus.validators import ModuleValidator

from client.privacy.dp_fedavg import clip_to, l2_norm, privatise, site_noise_std
from client.privacy.dp_sgd import DpSgdPlan
from client.privacy.noise import NoiseSource
from client.privacy.svt import share, svt_epsilon, svt_scales
from shared import models
from shared.errors import ConfigError

TINY = {"blocks_down": [1, 1], "blocks_up": [1]}


def change(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(64, 32, generator=generator) * scale,
        "conv.bias": torch.randn(64, generator=generator) * scale,
        "norm.num_batches_tracked": torch.tensor(7),
    }


# --- noise ------------------------------------------------------------------------------


def test_noise_has_the_asked_spread_and_only_a_seed_repeats_it() -> None:
    gaussian = NoiseSource(seed=1).gaussian((200_000,), 2.0)
    assert gaussian.std().item() == pytest.approx(2.0, rel=0.02)
    assert abs(gaussian.mean().item()) < 0.02
    laplace = NoiseSource(seed=1).laplace((200_000,), 0.5)
    assert laplace.abs().mean().item() == pytest.approx(0.5, rel=0.02)  # E|X| = b
    assert torch.equal(NoiseSource(seed=3).uniform(8), NoiseSource(seed=3).uniform(8))
    assert not torch.equal(NoiseSource().uniform(8), NoiseSource().uniform(8))
    assert sorted(NoiseSource(seed=2).permutation(50).tolist()) == list(range(50))


# --- dp_fedavg --------------------------------------------------------------------------


def test_clipping_bounds_the_delta_and_leaves_small_ones_alone() -> None:
    big = change(scale=10.0)
    clipped, before = clip_to(big, 0.5)
    assert before > 0.5
    assert l2_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    small = change(scale=1e-4)
    kept, _ = clip_to(small, 0.5)
    assert all(torch.equal(kept[n], small[n]) for n in small)


def test_dp_fedavg_noise_sums_to_sigma_c_over_min_sites() -> None:
    clip, sigma, sites = 0.5, 1.5, 4
    zero = {"w": torch.zeros(100_000)}
    shares = [
        privatise(
            zero, clip_norm=clip, noise_multiplier=sigma, min_sites=sites, noise=NoiseSource(seed=s)
        )
        for s in range(sites)
    ]
    one = shares[0]["w"].double()
    assert one.std().item() == pytest.approx(
        site_noise_std(clip_norm=clip, noise_multiplier=sigma, min_sites=sites), rel=0.02
    )
    total = sum(s["w"].double() for s in shares)
    assert isinstance(total, torch.Tensor)
    assert total.std().item() == pytest.approx(sigma * clip, rel=0.02)


def test_dp_fedavg_uploads_a_clipped_delta_plus_noise_and_no_counters() -> None:
    delta = change(scale=10.0)
    noise = NoiseSource(seed=5)
    out = privatise(delta, clip_norm=1.0, noise_multiplier=1e-6, min_sites=1, noise=noise)
    assert l2_norm(out) == pytest.approx(1.0, rel=1e-3)  # the clip, noise negligible
    assert out["norm.num_batches_tracked"].item() == 0
    assert out["conv.weight"].dtype == torch.float32


# --- svt --------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9, 1.0])
def test_svt_shares_at_most_the_fraction_within_the_clip(fraction: float) -> None:
    delta = change(seed=1, scale=1e-3)
    floats = sum(t.numel() for t in delta.values() if t.is_floating_point())
    out, count = share(
        delta, fraction=fraction, epsilon=1e6, threshold=0.0, clip=2e-3, noise=NoiseSource(seed=1)
    )
    nonzero = sum(int((t != 0).sum()) for n, t in out.items() if t.is_floating_point())
    assert nonzero <= count <= math.floor(fraction * floats)
    assert count >= 0.9 * math.floor(fraction * floats)  # at ε = 1e6 almost all pass
    assert max(float(t.abs().max()) for t in out.values() if t.is_floating_point()) <= 2e-3 * (
        1 + 1e-6
    )
    assert out["norm.num_batches_tracked"].item() == 0


def test_svt_at_a_large_epsilon_picks_the_coordinates_above_the_threshold() -> None:
    delta = {"w": torch.cat([torch.full((100,), 1e-3), torch.full((900,), 1e-6)])}
    out, count = share(
        delta, fraction=0.1, epsilon=1e7, threshold=5e-4, clip=2e-3, noise=NoiseSource(seed=2)
    )
    assert count == 100
    assert bool((out["w"][:100] != 0).all()) and bool((out["w"][100:] == 0).all())
    assert torch.allclose(out["w"][:100], torch.full((100,), 1e-3), rtol=1e-2)


def test_svt_epsilon_is_the_documented_formula() -> None:
    for epsilon, fraction, n, clip in [(1.0, 0.1, 10_000, 1e-3), (0.3, 0.9, 777, 0.5)]:
        scales = svt_scales(epsilon=epsilon, fraction=fraction, coordinates=n, clip=clip)
        c = math.floor(fraction * n)
        assert scales.count == c
        # docs/privacy.md: ε = γ/b₁ + 2cγ/b₂ + 2cγ/b₃, split in three equal parts
        assert clip / scales.threshold == pytest.approx(epsilon / 3)
        assert 2 * c * clip / scales.query == pytest.approx(epsilon / 3)
        assert 2 * c * clip / scales.value == pytest.approx(epsilon / 3)
        assert svt_epsilon(scales, clip=clip) == pytest.approx(epsilon)


# --- Opacus and the registry's SegResNet ------------------------------------------------


@pytest.mark.parametrize("name", ["segresnet-small", "segresnet"])
def test_opacus_accepts_the_registry_segresnet(name: str) -> None:
    model = models.build(name, TINY if name == "segresnet-small" else {})
    assert ModuleValidator.validate(model, strict=False) == []
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


def test_per_example_gradients_run_on_segresnet_in_ew_mode() -> None:
    model = models.build("segresnet-small", TINY)
    private = wrap_model(model, grad_sample_mode="ew", loss_reduction="mean")
    private(torch.randn(3, 4, 16, 16, 16)).mean().backward()
    for parameter in model.parameters():
        assert parameter.grad_sample.shape == (3, *parameter.shape)


def test_secure_mode_refuses_a_seed() -> None:
    with pytest.raises(ConfigError):
        DpSgdPlan(
            noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, secure_mode=True, seed=1
        )
    with pytest.raises(ConfigError):
        DpSgdPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.0)
