"""``runs create`` flags for a site-scale run: the split, evaluation cadence and compile."""

from __future__ import annotations

import pytest

from fedseg.admin_cli import build_run_config
from shared.errors import FedsegError

BASE = {
    "config_file": None,
    "model": None,
    "model_params": [],
    "rounds": None,
    "sites": ["a", "b"],
    "min_sites": None,
    "local_steps": None,
    "crop_size": None,
    "batch_size": None,
    "learning_rate": None,
    "round_timeout": None,
    "seed": None,
}


def test_split_and_evaluation_flags_reach_the_training_config() -> None:
    _, config = build_run_config(
        **BASE, val_fraction=0.3, eval_every=5, eval_max_cases=2, compile_step=True
    )
    training = config.training
    assert (training.val_fraction, training.eval_every, training.eval_max_cases) == (0.3, 5, 2)
    assert training.compile is True
    _, default = build_run_config(**BASE)
    assert default.training.compile is False and default.training.eval_every == 1


def test_an_impossible_fraction_is_refused() -> None:
    with pytest.raises((FedsegError, ValueError)):
        build_run_config(**BASE, val_fraction=1.5)


def test_library_noise_is_off_unless_verbose() -> None:
    import logging

    from fedseg.client_cli import NOISY_LOGGERS, _setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in NOISY_LOGGERS})
    try:
        _setup_logging(False)
        assert logging.getLogger("httpx").level == logging.WARNING
        assert logging.getLogger("httpcore").level == logging.WARNING
        assert root.level == logging.INFO
        _setup_logging(True)
        assert logging.getLogger("httpcore").level == logging.DEBUG
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
