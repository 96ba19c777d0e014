"""The bench's sites train as real sites do, and the crops it scores against are theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.attacks.mechanisms import MECHANISMS, MechanismConfig
from bench.attacks.sites import initial_weights, make_cohort, run_federation
from bench.attacks.uploads import seen_crops, site_upload
from client.training import build_model, dice_loss
from shared.schemas import TrainingConfig

CPU = torch.device("cpu")
CONFIG = TrainingConfig(local_steps=2, batch_size=2, crop_size=16, learning_rate=1e-3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root = Path(tmp_path_factory.mktemp("attack-sites"))
    return make_cohort(root, style=0, train_cases=2, held_out=2, size=32, config=CONFIG)


def test_cohort_groups_are_disjoint_and_members_are_the_sites_training_split(cohort) -> None:
    train_set, val_set = cohort.data.split(CONFIG)
    members = {c.case_id for c in train_set}
    held = {c.case_id for c in cohort.held_out}
    reference_train, _ = cohort.reference.split(CONFIG)
    references = {c.case_id for c in reference_train}
    assert len(members) == 2 and len(held) == 2 and len(references) == 2 and len(val_set) == 1
    assert not members & held and not members & references and not held & references


@pytest.mark.slow
def test_replayed_crops_are_the_ones_training_used(cohort) -> None:
    base = initial_weights("segresnet-small", {})
    upload = site_upload(
        model_name="segresnet-small",
        model_params={},
        base=base,
        config=CONFIG,
        data=cohort.data,
        device=CPU,
        seed=5,
    )
    assert upload.crops.shape == (4, 4, 16, 16, 16) and upload.crop_labels.shape[1] == 3
    # Retrain by hand on the replayed batches: the same crops give the same delta.
    model = build_model("segresnet-small", {}, base).train()
    optimiser = torch.optim.Adam(
        model.parameters(), lr=CONFIG.learning_rate, weight_decay=CONFIG.weight_decay
    )
    for step in range(CONFIG.local_steps):
        batch = slice(step * CONFIG.batch_size, (step + 1) * CONFIG.batch_size)
        optimiser.zero_grad()
        dice_loss()(model(upload.crops[batch]), upload.crop_labels[batch]).backward()
        optimiser.step()
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, base[name] + upload.delta[name], atol=1e-6), name
    # Another seed draws other crops: the replay really depends on the seed.
    other, _ = seen_crops(cohort.data, CONFIG, seed=6, device=CPU)
    assert not torch.equal(other, upload.crops)


@pytest.mark.slow
def test_federation_moves_the_consensus_by_the_protected_mean(cohort) -> None:
    protect = MECHANISMS["dp_fedavg"]
    assert protect is not None
    run = run_federation(
        model_name="segresnet-small",
        model_params={},
        sites=[cohort.data],
        config=CONFIG,
        rounds=1,
        protect=protect,
        mechanism=MechanismConfig(clip_norm=0.01, noise_multiplier=0.0),
        device=CPU,
    )
    (view,) = run.views
    for name, tensor in run.weights.items():
        assert torch.allclose(tensor, run.base[name] + view[name], atol=1e-7)
    assert not torch.allclose(view[name], run.uploads[0].delta[name])  # clipped: not the raw delta


@pytest.mark.slow
def test_replayed_private_crops_are_the_ones_dp_sgd_trained_on(cohort) -> None:
    from bench.attacks.uploads import parameter_shapes, seen_private_crops
    from client.privacy.dp_sgd import DpSgdPlan, private_training_steps

    config = TrainingConfig(local_steps=4, batch_size=1, crop_size=16, learning_rate=1e-3)
    plan = DpSgdPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, seed=11)
    model = build_model("segresnet-small", {}, initial_weights("segresnet-small", {}))
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    train_set, _ = cohort.data.split(config)
    for _ in private_training_steps(
        model, train_set, crop_size=16, device=CPU, plan=plan, steps=config.local_steps,
        batch_size=1, learning_rate=1e-3, weight_decay=0.0, seed=5,
    ):  # fmt: skip
        pass
    images, labels = seen_private_crops(
        cohort.data, config, plan, parameter_shapes("segresnet-small", {}), seed=5, device=CPU
    )
    trained = torch.cat(seen) if seen else torch.zeros((0, 4, 16, 16, 16))
    assert images.shape[0] > 0 and labels.shape[0] == images.shape[0]
    assert images.shape == trained.shape
    assert torch.equal(images, trained)
    # Another noise seed samples other cases or crops: the replay follows the plan's stream.
    other = DpSgdPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, seed=12)
    replayed, _ = seen_private_crops(
        cohort.data, config, other, parameter_shapes("segresnet-small", {}), seed=5, device=CPU
    )
    assert replayed.shape != images.shape or not torch.equal(replayed, images)
