"""A site's local data: find the cases (layouts), check them, split them, cache them.

``discover`` finds the cases of a folder or datalist in any supported layout;
``check_dataset``/``valid_cases`` check them in one pass; ``split_ids`` decides
training and validation; ``preprocess_case`` runs the MONAI pipeline over one case
and ``load_cases`` keeps its output in the on-disk cache. Nothing here trains or
talks to a network.
"""

from client.data.checks import CaseReport, DataReport, check_case, check_dataset, valid_cases
from client.data.layouts import (
    BRATS_LABELS,
    MODALITIES,
    REGION_CODES,
    REGIONS,
    Case,
    Dataset,
    Layout,
    discover,
)
from client.data.splits import Split, read_held_out, split_ids

__all__ = [
    "BRATS_LABELS",
    "MODALITIES",
    "REGIONS",
    "REGION_CODES",
    "Case",
    "CaseReport",
    "DataReport",
    "Dataset",
    "Layout",
    "Split",
    "check_case",
    "check_dataset",
    "discover",
    "read_held_out",
    "split_ids",
    "valid_cases",
]
