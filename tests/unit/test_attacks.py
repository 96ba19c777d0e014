"""The attack library works on cases where attacks are known to succeed.

A weak attack must not pass for a strong defence, so each instrument is shown to work on
an undefended tiny model first: gradient inversion recovers one image from the gradient
of a small fully connected net, membership inference separates the members of a model
that memorised them, and the AUC and TPR helpers equal hand-computed values.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench.attacks.inversion import (
    InversionConfig,
    cosine_distance,
    invert,
    simulate_update,
    total_variation,
)
from bench.attacks.mechanisms import MECHANISMS, MechanismConfig, dp_fedavg
from bench.attacks.membership import (
    calibrated_scores,
    example_losses,
    judge,
    loss_threshold_scores,
)
from bench.attacks.scores import roc_auc, tpr_at_fpr
from bench.attacks.similarity import best_matches, image_similarity, label_dice
from bench.attacks.uploads import l2_norm, weighted_mean


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models gain nothing from threads, and spin-waiting costs a shared CPU dearly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- scores ------------------------------------------------------------------------------


def test_auc_equals_a_hand_computed_value() -> None:
    # Pairs (member, other) where the member scores higher: 0.9 and 0.8 beat all three
    # (6), 0.4 beats 0.1 (1) and ties 0.4 (1/2): 7.5 of 9 pairs.
    assert roc_auc([0.9, 0.8, 0.4], [0.5, 0.4, 0.1]) == pytest.approx(7.5 / 9)
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5


def test_auc_equals_the_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(5)
    members = rng.integers(0, 6, 40).astype(float)
    others = rng.integers(0, 5, 30).astype(float)
    pairs = [(m > o) + 0.5 * (m == o) for m, o in itertools.product(members, others)]
    assert roc_auc(members, others) == pytest.approx(float(np.mean(pairs)))


def test_tpr_at_one_percent_fpr() -> None:
    others = np.arange(100) / 100.0  # 0.00 .. 0.99; one false positive allowed at 1%
    assert tpr_at_fpr([0.985, 0.995, 0.5], others, 0.01) == pytest.approx(2 / 3)
    # Ten non-members: 1% allows none, so the threshold is the highest of them.
    assert tpr_at_fpr([0.5, 0.95, 2.0], np.linspace(0, 0.9, 10), 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr([0.1], [0.2], 0.01) == 0.0


def test_scores_refuse_empty_and_non_finite_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        tpr_at_fpr([float("nan")], [1.0])


# --- similarity --------------------------------------------------------------------------


def _blobs(size: int = 16) -> torch.Tensor:
    """A smooth 1 x size x size image: two Gaussian blobs."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    image = torch.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.1)
    image = image + 0.6 * torch.exp(-((x + 0.4) ** 2 + (y - 0.4) ** 2) / 0.05)
    return image[None]


def test_similarity_tells_a_copy_from_noise() -> None:
    truth = _blobs()
    ssim, psnr = image_similarity(truth.clone(), truth)
    assert ssim == pytest.approx(1.0) and psnr > 60
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    ssim_noise, psnr_noise = image_similarity(noise, truth)
    assert ssim_noise < 0.2 and psnr_noise < 10


def test_best_matches_pick_the_closest_truth_and_score_its_labels() -> None:
    truth = _blobs()
    others = torch.stack([torch.zeros_like(truth), truth])
    labels = torch.stack([torch.zeros_like(truth), (truth > 0.5).float()])
    found = best_matches(truth[None], others, labels=labels[1:], true_labels=labels)
    assert found[0].ssim == pytest.approx(1.0) and found[0].label_dice == 1.0


def test_label_dice() -> None:
    truth = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert label_dice(torch.tensor([0.9, 0.2, 0.7, 0.1]), truth) == pytest.approx(0.5)
    assert label_dice(torch.zeros(4), torch.zeros(4)) == 1.0


# --- gradient inversion ------------------------------------------------------------------


def _fc_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(256, 200), torch.nn.Sigmoid(), torch.nn.Linear(200, 10)
    )


def _gradient(net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor) -> dict:
    loss = torch.nn.functional.cross_entropy(net(image), label)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return {name: g for (name, _), g in zip(net.named_parameters(), grads, strict=True)}


def test_inversion_recovers_one_image_from_a_small_fc_gradient() -> None:
    net, image, label = _fc_net(), _blobs()[None], torch.tensor([3])
    base = {name: p.detach().clone() for name, p in net.named_parameters()}
    found = invert(
        model=net,
        base=base,
        observed=_gradient(net, image, label),
        image_shape=image.shape,
        loss_fn=torch.nn.functional.cross_entropy,
        labels=label,
        config=InversionConfig(iterations=100, restarts=1, tv_weight=1e-3, labels="known"),
    )
    ssim, _ = image_similarity(found.images[0], image[0])
    assert ssim > 0.9
    assert found.distance < 1e-3


@pytest.mark.slow
def test_inversion_recovers_image_and_label_when_labels_are_unknown() -> None:
    net, image, label = _fc_net(), _blobs()[None], torch.tensor([3])
    base = {name: p.detach().clone() for name, p in net.named_parameters()}
    found = invert(
        model=net,
        base=base,
        observed=_gradient(net, image, label),
        image_shape=image.shape,
        loss_fn=torch.nn.functional.cross_entropy,
        label_shape=(1, 10),
        config=InversionConfig(iterations=250, restarts=1, tv_weight=1e-3, labels="optimise"),
    )
    assert found.labels is not None and int(found.labels.argmax()) == 3
    assert image_similarity(found.images[0], image[0])[0] > 0.9


def test_inversion_of_an_unrelated_update_recovers_nothing() -> None:
    # The same attack against the gradient of a different image: it must not land on ours.
    net, image, label = _fc_net(), _blobs()[None], torch.tensor([3])
    other = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    base = {name: p.detach().clone() for name, p in net.named_parameters()}
    found = invert(
        model=net,
        base=base,
        observed=_gradient(net, other, label),
        image_shape=image.shape,
        loss_fn=torch.nn.functional.cross_entropy,
        labels=label,
        config=InversionConfig(iterations=60, restarts=1, tv_weight=1e-3, labels="known"),
    )
    assert image_similarity(found.images[0], image[0])[0] < 0.5


def test_inversion_refuses_an_update_missing_parameters() -> None:
    net = _fc_net()
    base = {name: p.detach() for name, p in net.named_parameters()}
    with pytest.raises(ValueError, match="lacks parameters"):
        invert(
            model=net,
            base=base,
            observed={},
            image_shape=(1, 1, 16, 16),
            loss_fn=torch.nn.functional.cross_entropy,
            labels=torch.tensor([0]),
            config=InversionConfig(labels="known"),
        )


def test_cosine_distance_ignores_scale_and_sees_direction() -> None:
    a = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    assert float(cosine_distance(a, [3 * t for t in a])) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(a, [-t for t in a])) == pytest.approx(2.0)


def test_adam_update_model_is_a_smooth_sign() -> None:
    grads = [torch.tensor([1e-2, -1e-2, 1e-6])]
    (update,) = simulate_update(grads, "adam")
    # Large coordinates go to +-1 (Adam's first step is lr * sign(g)), tiny ones stay small.
    assert update[0] == pytest.approx(1.0, abs=0.05) and update[1] == pytest.approx(-1.0, abs=0.05)
    assert abs(float(update[2])) < 0.01
    assert simulate_update(grads, "gradient")[0] is grads[0]


def test_total_variation_is_zero_on_a_constant_image() -> None:
    assert float(total_variation(torch.ones(1, 2, 4, 4, 4))) == 0.0
    assert float(total_variation(torch.eye(4)[None, None])) > 0.0


# --- membership inference ----------------------------------------------------------------


def test_membership_auc_is_high_on_a_model_that_memorised_its_members() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 20, generator=generator)
    targets = torch.randint(0, 4, (64,), generator=generator)  # random labels: memorise only
    members, others = list(range(32)), list(range(32, 64))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs[members]), targets[members]).backward()
        optimiser.step()
    losses = example_losses(
        net, [(inputs[i], targets[i]) for i in range(64)], torch.nn.functional.cross_entropy
    )
    result = judge(loss_threshold_scores(losses[members]), loss_threshold_scores(losses[others]))
    assert result.auc > 0.9 and result.tpr_at_1pct_fpr > 0.3
    assert (result.members, result.others) == (32, 32)


def test_membership_auc_is_chance_on_an_untrained_model() -> None:
    generator = torch.Generator().manual_seed(1)
    losses = torch.rand(200, generator=generator).numpy()
    result = judge(loss_threshold_scores(losses[:100]), loss_threshold_scores(losses[100:]))
    assert 0.4 < result.auc < 0.6


def test_calibration_removes_per_example_difficulty() -> None:
    # Example 0 is hard for every model, example 1 easy; the target fits 0 unusually well.
    target = [2.0, 0.5]
    references = [[3.0, 0.5], [3.2, 0.6]]
    assert list(loss_threshold_scores(target)) == [-2.0, -0.5]  # raw: 1 looks like the member
    calibrated = calibrated_scores(target, references)
    assert calibrated[0] == pytest.approx(1.1) and calibrated[1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="reference"):
        calibrated_scores(target, [1.0, 2.0])


# --- the attacker's views ----------------------------------------------------------------


def test_weighted_mean_is_the_fedavg_mean() -> None:
    deltas = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 4.0])}]
    mean = weighted_mean(deltas, [3, 1])
    assert torch.allclose(mean["w"], torch.tensor([0.75, 1.0]))


def test_dp_fedavg_clips_then_adds_noise_of_the_stated_size() -> None:
    delta = {"a": torch.full((10_000,), 0.1), "b": torch.full((10,), 0.1)}  # norm ~ 10
    clipped = dp_fedavg(delta, MechanismConfig(clip_norm=1.0, noise_multiplier=0.0))
    assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    noisy = dp_fedavg(delta, MechanismConfig(clip_norm=1.0, noise_multiplier=2.0, noise_sites=4))
    noise = noisy["a"] - clipped["a"]
    assert float(noise.std()) == pytest.approx(2.0 * 1.0 / 2, rel=0.05)
    with pytest.raises(ValueError, match="clip_norm"):
        dp_fedavg(delta, MechanismConfig(clip_norm=0.0))


# --- the bench's verdicts ----------------------------------------------------------------


def _row(name: str, ssim: float, auc: float):
    from bench.attacks.membership import MembershipResult
    from bench.privacy_attacks import SETTINGS, Row

    setting = next(s for s in SETTINGS if s.name == name)
    result = MembershipResult(auc=auc, tpr_at_1pct_fpr=0.0, members=8, others=8)
    return Row(setting, ssim, 10.0, 0.1, result, result, 0.5, 1.0)


def test_a_low_ssim_is_never_a_pass_unless_the_attack_recovered_the_worst_case() -> None:
    from bench.privacy_attacks import verdict

    defended = _row("secagg3", ssim=0.05, auc=0.5)
    works = _row("worst", ssim=0.8, auc=0.5)
    assert verdict(defended, None, 0.0).startswith("INCONCLUSIVE")
    assert verdict(defended, _row("worst", ssim=0.1, auc=0.5), 0.0).startswith("INCONCLUSIVE")
    assert verdict(defended, works, 0.01).startswith("PASS")
    assert verdict(_row("secagg3", ssim=0.05, auc=0.7), None, 0.0).startswith("MISS")
    assert verdict(_row("secagg3", ssim=0.6, auc=0.5), None, 0.0).startswith("MISS")


def test_the_dice_cost_is_judged_and_an_unknown_cost_is_never_a_pass(tmp_path) -> None:
    import json

    from bench.privacy_attacks import SETTINGS, format_row, load_costs, verdict

    defended, works = _row("secagg3", ssim=0.05, auc=0.5), _row("worst", ssim=0.8, auc=0.5)
    assert verdict(defended, works, 0.05).startswith("MISS")  # leaks little, costs too much
    assert verdict(defended, works).startswith("INCONCLUSIVE")  # cost not given
    assert "unknown (no --utility run in which FedAvg learned)" in verdict(defended, works)
    table = tmp_path / "utility.json"
    rows = [{"row": name, "cost": cost} for name, cost in (("none", 0.0), ("svt-0.1", 0.033))]
    table.write_text(json.dumps({"fedavg_learned": False, "rows": rows}))
    assert set(load_costs(table).values()) == {None}  # FedAvg learned nothing: no costs
    table.write_text(json.dumps({"fedavg_learned": True, "rows": rows}))
    costs = load_costs(table)
    svt = _row("svt", ssim=0.01, auc=0.5)
    assert costs.get(svt.setting.utility_row) == 0.033
    assert "+0.033" in format_row(svt, costs.get(svt.setting.utility_row))
    assert "see privacy_utility" in format_row(svt)
    named = {s.utility_row for s in SETTINGS}  # every row names one the utility bench has
    assert named == {"none", "dp_fedavg-1", "svt-0.1", "dp_sgd-eps1", "dp_sgd-eps8"}


def test_every_row_has_a_real_mechanism_and_dp_sgd_rows_spend_their_epsilon() -> None:
    from bench.privacy_attacks import CPU as SCALE
    from bench.privacy_attacks import DELTA, chosen, dp_sgd_plan, training_config
    from client.privacy.accountant import Spend, total_epsilon

    rows = chosen([], ["dp_sgd"])
    assert [r.name for r in rows] == ["dp_sgd_eps1", "dp_sgd_eps8"]
    assert all(protect is not None for protect in MECHANISMS.values())
    sigmas = []
    for row in rows:
        config = training_config(row, SCALE)
        plan = dp_sgd_plan(row, config, SCALE)
        assert plan is not None and row.target_epsilon is not None
        spent = total_epsilon(
            [Spend("dp_sgd", plan.noise_multiplier, plan.sample_rate, config.local_steps,
                   plan.max_grad_norm)] * SCALE.rounds,
            delta=DELTA,
        )  # fmt: skip
        assert spent == pytest.approx(row.target_epsilon, rel=0.05)
        sigmas.append(plan.noise_multiplier)
    assert sigmas[0] > sigmas[1]  # epsilon 1 needs more noise than epsilon 8
    assert dp_sgd_plan(chosen(["default"], [])[0], training_config(rows[0], SCALE), SCALE) is None


def test_svt_shares_at_most_its_fraction_of_coordinates_each_clipped() -> None:
    delta = {"w": torch.linspace(-1, 1, 1000), "b": torch.full((10,), 0.5)}
    view = MECHANISMS["svt"](delta, MechanismConfig(svt_fraction=0.1, svt_clip=1e-4, seed=3))
    flat = torch.cat([view["w"], view["b"]])
    assert int((flat != 0).sum()) <= 101
    assert float(flat.abs().max()) <= 1e-4
    again = MECHANISMS["svt"](delta, MechanismConfig(svt_fraction=0.1, svt_clip=1e-4, seed=3))
    assert torch.equal(again["w"], view["w"])  # seeded: a table can be rerun
