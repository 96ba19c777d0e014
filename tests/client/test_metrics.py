"""BraTS metric conventions on tiny hand-built masks."""

from __future__ import annotations

import pytest
import torch

from client.training.metrics import HD95_ONE_EMPTY, case_metrics, mean_metrics


def masks(shape=(3, 20, 20, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)


def test_both_empty_is_perfect() -> None:
    pred, truth = masks()
    scores = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert scores["dice_et"] == 1.0 and scores["hd95_et"] == 0.0
    assert scores["dice_mean"] == 1.0 and scores["hd95_mean"] == 0.0


@pytest.mark.parametrize("side", ["prediction", "truth"])
def test_exactly_one_empty_scores_zero_and_374(side: str) -> None:
    pred, truth = masks()
    (pred if side == "prediction" else truth)[2, 5:9, 5:9, 5:9] = True
    scores = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert scores["dice_et"] == 0.0 and scores["hd95_et"] == HD95_ONE_EMPTY == 374.0
    assert scores["dice_tc"] == 1.0 and scores["hd95_tc"] == 0.0  # both empty


def test_an_offset_cube_has_the_known_hd95_in_millimetres() -> None:
    pred, truth = masks()
    truth[1, 4:10, 4:10, 4:10] = True
    pred[1, 7:13, 4:10, 4:10] = True  # shifted 3 voxels along x
    scores = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert scores["dice_wt"] == pytest.approx(0.5)  # 3 of 6 slabs overlap
    assert scores["hd95_wt"] == pytest.approx(3.0)
    # the same masks at 2 mm along x: the distance doubles, Dice does not change
    spaced = case_metrics(pred, truth, (2.0, 1.0, 1.0))
    assert spaced["hd95_wt"] == pytest.approx(6.0)
    assert spaced["dice_wt"] == pytest.approx(0.5)


def test_identical_masks() -> None:
    _, truth = masks()
    truth[:, 3:8, 3:8, 3:8] = True
    scores = case_metrics(truth.clone(), truth, (1.0, 1.0, 1.0))
    assert scores["dice_mean"] == 1.0 and scores["hd95_mean"] == 0.0


def test_mean_over_cases() -> None:
    pred, truth = masks()
    perfect = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    truth[0, 1:3, 1:3, 1:3] = True
    missed = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    mean = mean_metrics([perfect, missed])
    assert mean["dice_tc"] == 0.5 and mean["hd95_tc"] == 187.0
