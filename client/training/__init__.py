"""Local training and evaluation with MONAI; knows nothing of the network.

Cases come preprocessed from the on-disk cache (`client.data.cache`); training
samples label-centred crops from them (`crops`), one step at a time (`steps`);
evaluation runs sliding-window inference over whole cases and scores BraTS Dice
and HD95 (`evaluation`, `metrics`).
"""

from client.training.crops import CropPool
from client.training.devices import (
    Precision,
    autocast,
    configure_device,
    resolve_device,
    resolve_precision,
)
from client.training.evaluation import evaluate, evaluation_roi
from client.training.metrics import METRIC_KEYS, case_metrics, mean_metrics
from client.training.site import SiteData, load_site_data, open_site_data
from client.training.steps import (
    TrainResult,
    build_model,
    dice_loss,
    step_model,
    train,
    training_step,
    training_steps,
)

__all__ = [
    "METRIC_KEYS",
    "CropPool",
    "Precision",
    "SiteData",
    "TrainResult",
    "autocast",
    "build_model",
    "case_metrics",
    "configure_device",
    "dice_loss",
    "evaluate",
    "evaluation_roi",
    "load_site_data",
    "mean_metrics",
    "open_site_data",
    "resolve_device",
    "resolve_precision",
    "step_model",
    "train",
    "training_step",
    "training_steps",
]
