"""Where exports pickled while the epoch metrics lived here find them (`figures.epoch_metrics`)."""

from ..figures.epoch_metrics import (  # noqa: F401 (names that exported Learners refer to)
    balanced_accuracy,
    collapsed,
    f1_pneumonia,
    macro_auc,
    recall_normal,
    recall_pneumonia,
    roc_auc,
)
